// CPU reference of the load loss of noisy top-k gating (Shazeer et al. 2017): the smooth
// estimator of each expert's load, its CV^2 and the gradients into the clean and noise logits.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/balance.h"
#include "src/util/check.h"

namespace moe::cpu {

namespace {

constexpr double k_inv_sqrt2 = 0.70710678118654752440;
constexpr double k_inv_sqrt_2pi = 0.39894228040143267794;

double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  double e = std::exp(x);
  return e / (1.0 + e);
}
double normal_cdf(double z) { return 0.5 * std::erfc(-z * k_inv_sqrt2); }
double normal_pdf(double z) { return k_inv_sqrt_2pi * std::exp(-0.5 * z * z); }

}  // namespace

// P(t,i) = Phi(z_ti), z_ti = (clean_ti - h_tj) / softplus(raw_ti) with j the expert whose h is
// the k-th largest of the others: order[k] when i is among the top k, order[k-1] otherwise.
template <typename T>
void load_balance(const T* clean, const T* raw_noise, const T* normal, int64_t tokens, int64_t num_experts, int64_t k,
                  double coef, double* value, T* dclean, T* draw_noise) {
  const int64_t E = num_experts;
  MOE_CHECK(k >= 1 && k < E, "load_balance: needs 1 <= k < E (the k-th largest of the other E-1 experts), got k = ",
            k, ", E = ", E);
  const auto n = static_cast<size_t>(tokens * E);
  std::vector<double> load(static_cast<size_t>(E), 0.0), sp(n), h(n), z(n);
  std::vector<int64_t> source(n), order(static_cast<size_t>(E));
  std::vector<bool> in_top(static_cast<size_t>(E));
  for (int64_t r = 0; r < tokens; ++r) {
    const size_t row = static_cast<size_t>(r * E);
    for (size_t j = row; j < row + static_cast<size_t>(E); ++j) {
      sp[j] = softplus(static_cast<double>(raw_noise[j]));
      h[j] = static_cast<double>(clean[j]) + static_cast<double>(normal[j]) * sp[j];
    }
    // Rank by h, ties to the lower index.
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return h[row + a] > h[row + b]; });
    std::fill(in_top.begin(), in_top.end(), false);
    for (int64_t q = 0; q < k; ++q) in_top[static_cast<size_t>(order[q])] = true;
    for (int64_t i = 0; i < E; ++i) {
      const int64_t j = in_top[static_cast<size_t>(i)] ? order[k] : order[k - 1];
      const size_t a = row + static_cast<size_t>(i);
      source[a] = j;
      z[a] = (static_cast<double>(clean[a]) - h[row + static_cast<size_t>(j)]) / sp[a];
      load[static_cast<size_t>(i)] += normal_cdf(z[a]);
    }
  }
  std::vector<double> dload(static_cast<size_t>(E));
  const double cv2 = cv_squared(load.data(), E, dload.data());
  // Each row's gradient is summed in double, then added to the arrays once.
  std::vector<double> gclean(static_cast<size_t>(E)), graw(static_cast<size_t>(E));
  for (int64_t r = 0; r < tokens; ++r) {
    const size_t row = static_cast<size_t>(r * E);
    std::fill(gclean.begin(), gclean.end(), 0.0);
    std::fill(graw.begin(), graw.end(), 0.0);
    for (int64_t i = 0; i < E; ++i) {
      const size_t a = row + static_cast<size_t>(i), j = static_cast<size_t>(source[a]), b = row + j;
      // dz/dclean_i = 1/sp_i; dz/draw_i = -z sigmoid(raw_i) / sp_i; dz/dthr = -1/sp_i with
      // dthr/dclean_j = 1 and dthr/draw_j = normal_j sigmoid(raw_j).
      const double g = coef * dload[static_cast<size_t>(i)] * normal_pdf(z[a]) / sp[a];
      gclean[static_cast<size_t>(i)] += g;
      graw[static_cast<size_t>(i)] -= g * z[a] * sigmoid(static_cast<double>(raw_noise[a]));
      gclean[j] -= g;
      graw[j] -= g * static_cast<double>(normal[b]) * sigmoid(static_cast<double>(raw_noise[b]));
    }
    for (int64_t i = 0; i < E; ++i) {
      const size_t a = row + static_cast<size_t>(i);
      dclean[a] = static_cast<T>(dclean[a] + gclean[static_cast<size_t>(i)]);
      draw_noise[a] = static_cast<T>(draw_noise[a] + graw[static_cast<size_t>(i)]);
    }
  }
  value[0] = coef * cv2;
}

template void load_balance<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, double, double*,
                                  float*, float*);
template void load_balance<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t, double,
                                   double*, double*, double*);

}  // namespace moe::cpu

// Shazeer et al.'s load loss w * CV(Load)^2 with the smooth estimator of noisy top-k gating:
// reads the gating noise (training only). A CV over every token: not computable from a TP slice.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "routing/balancing_terms.h"
#include "src/util/check.h"

namespace moe {

namespace {

using balancing_detail::idx;

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

// P(x,i) = Phi((clean_i - thr_i) / softplus(raw_i)) with thr_i the k-th largest of
// h = clean + normal * softplus(raw) over the other experts; L = w * CV(Load)^2.
// thr_i is h_j of one expert j, so the gradient also flows into clean_j and raw_j.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  const double w = c.load_coef;
  const int64_t T = in.tokens, E = in.experts, k = in.slots;
  std::vector<double> load(static_cast<size_t>(E), 0.0), sp(static_cast<size_t>(T * E)),
      h(static_cast<size_t>(T * E)), z(static_cast<size_t>(T * E));
  std::vector<int64_t> source(static_cast<size_t>(T * E));  // the expert whose h is thr_i
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t j = 0; j < E; ++j) {
      sp[idx(r, E, j)] = softplus(in.raw_noise[idx(r, E, j)]);
      h[idx(r, E, j)] = in.clean[idx(r, E, j)] + in.normal[idx(r, E, j)] * sp[idx(r, E, j)];
    }
    // Rank by h (ties: lower index first). Excluding i: if i is among the top k the k-th
    // largest of the rest is order[k], otherwise order[k-1].
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return h[idx(r, E, a)] > h[idx(r, E, b)]; });
    std::vector<bool> in_top(static_cast<size_t>(E), false);
    for (int64_t q = 0; q < k; ++q) in_top[static_cast<size_t>(order[q])] = true;
    for (int64_t i = 0; i < E; ++i) {
      int64_t j = in_top[static_cast<size_t>(i)] ? order[k] : order[k - 1];
      source[idx(r, E, i)] = j;
      z[idx(r, E, i)] = (in.clean[idx(r, E, i)] - h[idx(r, E, j)]) / sp[idx(r, E, i)];
      load[static_cast<size_t>(i)] += normal_cdf(z[idx(r, E, i)]);
    }
  }
  std::vector<double> dload;
  double cv2 = balancing_detail::cv_squared(load, dload);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t i = 0; i < E; ++i) {
      size_t a = idx(r, E, i);
      size_t b = idx(r, E, source[a]);
      // dz/dclean_i = 1/sp_i; dz/draw_i = -z sigmoid(raw_i) / sp_i; dz/dthr = -1/sp_i with
      // dthr/dclean_j = 1 and dthr/draw_j = normal_j sigmoid(raw_j).
      double g = w * dload[static_cast<size_t>(i)] * normal_pdf(z[a]) / sp[a];
      out.dclean[a] += g;
      out.draw_noise[a] -= g * z[a] * sigmoid(in.raw_noise[a]);
      out.dclean[b] -= g;
      out.draw_noise[b] -= g * in.normal[b] * sigmoid(in.raw_noise[b]);
    }
  }
  return w * cv2;
}

uint32_t inputs(const BalancingConfig&) { return balance_input::noise; }

void check(const BalanceInputs& in, const BalancingConfig&) {
  MOE_CHECK(in.slots < in.experts, "balancing: load_coef needs slots < experts (the k-th largest of the other E-1 "
            "experts), got k = ", in.slots, ", E = ", in.experts);
}

}  // namespace

BalancingTerm load_balancing_term() {
  return {.name = "load", .coef_name = "load_coef", .config_key = "moe.load_loss_coef",
          .coef = &BalancingConfig::load_coef, .config_coef = &MoeConfig::load_loss_coef, .inputs = inputs,
          .tp = TpRule::not_allowed, .check = check, .compute = compute};
}

}  // namespace moe

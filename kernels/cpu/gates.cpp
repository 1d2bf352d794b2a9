// CPU reference router gates. softplus and sigmoid use their stable forms, so a raw noise
// logit of +-100 gives a finite, exact-to-rounding result instead of inf or 0/0.
#include "kernels/cpu/gates.h"

#include <algorithm>
#include <cmath>

namespace moe::cpu {

namespace {

// log1p(exp(x)) = max(x, 0) + log1p(exp(-|x|))
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

}  // namespace

template <typename T>
void noisy_logits_forward(const T* clean, const T* raw_noise, const T* normal, T* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    h[i] = static_cast<T>(static_cast<double>(clean[i]) +
                          static_cast<double>(normal[i]) * softplus(static_cast<double>(raw_noise[i])));
  }
}

template <typename T>
void noisy_logits_backward(const T* raw_noise, const T* normal, const T* dh, T* dclean, T* draw_noise, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dclean[i] = dh[i];
    draw_noise[i] = static_cast<T>(static_cast<double>(dh[i]) * static_cast<double>(normal[i]) *
                                   sigmoid(static_cast<double>(raw_noise[i])));
  }
}

template <typename T>
void row_gate_forward(const T* x, const T* gate, T* y, int64_t tokens, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t) {
    const double g = sigmoid(static_cast<double>(gate[t]));
    for (int64_t c = 0; c < dim; ++c) y[t * dim + c] = static_cast<T>(g * static_cast<double>(x[t * dim + c]));
  }
}

template <typename T>
void row_gate_backward(const T* x, const T* gate, const T* dy, T* dx, T* dgate, int64_t tokens, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t) {
    const double z = static_cast<double>(gate[t]), g = sigmoid(z);
    double dot = 0;
    for (int64_t c = 0; c < dim; ++c) {
      const double d = static_cast<double>(dy[t * dim + c]);
      dot += d * static_cast<double>(x[t * dim + c]);
      dx[t * dim + c] = static_cast<T>(g * d);
    }
    dgate[t] = static_cast<T>(dot * g * sigmoid(-z));
  }
}

template void noisy_logits_forward<float>(const float*, const float*, const float*, float*, int64_t);
template void noisy_logits_forward<double>(const double*, const double*, const double*, double*, int64_t);
template void noisy_logits_backward<float>(const float*, const float*, const float*, float*, float*, int64_t);
template void noisy_logits_backward<double>(const double*, const double*, const double*, double*, double*, int64_t);
template void row_gate_forward<float>(const float*, const float*, float*, int64_t, int64_t);
template void row_gate_forward<double>(const double*, const double*, double*, int64_t, int64_t);
template void row_gate_backward<float>(const float*, const float*, const float*, float*, float*, int64_t, int64_t);
template void row_gate_backward<double>(const double*, const double*, const double*, double*, double*, int64_t,
                                        int64_t);

}  // namespace moe::cpu

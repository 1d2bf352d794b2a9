// CPU reference AdamW. Per-element arithmetic runs in double, so f32 and f64 parameters see
// the same update up to their storage rounding.
#include "kernels/cpu/adamw.h"

#include <cmath>

#include "src/util/check.h"

namespace moe::cpu {

template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const kernels::AdamWParams& p) {
  MOE_CHECK(p.step >= 1, "adamw: step must be 1-based, got ", p.step);
  const double lr = p.lr, b1 = p.beta1, b2 = p.beta2, eps = p.eps, weight_decay = p.weight_decay;
  const double correction1 = 1.0 - std::pow(b1, static_cast<double>(p.step));
  const double correction2 = 1.0 - std::pow(b2, static_cast<double>(p.step));
  for (int64_t i = 0; i < n; ++i) {
    const double g = grad[i];
    const double mi = b1 * m[i] + (1.0 - b1) * g;
    const double vi = b2 * v[i] + (1.0 - b2) * g * g;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    const double update = (mi / correction1) / (std::sqrt(vi / correction2) + eps);
    param[i] = static_cast<T>(param[i] - lr * (update + weight_decay * param[i]));
  }
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, const kernels::AdamWParams&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, const kernels::AdamWParams&);

}  // namespace moe::cpu

// CPU reference AdamW. Per-element arithmetic runs in double, so f32 and f64 parameters see
// the same update up to their storage rounding.
#include "kernels/cpu/adamw.h"

#include <cmath>

#include "src/util/check.h"

namespace moe::cpu {

template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWConfig& cfg) {
  MOE_CHECK(cfg.step >= 1, "adamw: step must be 1-based, got ", cfg.step);
  const double b1 = cfg.beta1, b2 = cfg.beta2;
  const double correction1 = 1.0 - std::pow(b1, static_cast<double>(cfg.step));
  const double correction2 = 1.0 - std::pow(b2, static_cast<double>(cfg.step));
  for (int64_t i = 0; i < n; ++i) {
    const double g = grad[i];
    const double mi = b1 * m[i] + (1.0 - b1) * g;
    const double vi = b2 * v[i] + (1.0 - b2) * g * g;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    const double update = (mi / correction1) / (std::sqrt(vi / correction2) + cfg.eps);
    param[i] = static_cast<T>(param[i] - cfg.lr * (update + cfg.weight_decay * param[i]));
  }
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, const AdamWConfig&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, const AdamWConfig&);

}  // namespace moe::cpu

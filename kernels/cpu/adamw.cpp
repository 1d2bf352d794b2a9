// CPU reference AdamW and its fused multi-run form. Per-element arithmetic runs in double, so
// f32 and f64 parameters see the same update up to their storage rounding.
#include "kernels/cpu/adamw.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

struct Corrections {
  double c1, c2;
};

Corrections corrections(const kernels::AdamWParams& p) {
  MOE_CHECK(p.step >= 1, "adamw: step must be 1-based, got ", p.step);
  return {1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step)),
          1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step))};
}

// One element: g is the gradient as stored (already rounded to T).
template <typename T>
void adamw_one(T& param, double g, T& m, T& v, const kernels::AdamWParams& p, double weight_decay, Corrections c) {
  const double lr = p.lr, b1 = p.beta1, b2 = p.beta2, eps = p.eps;
  const double mi = b1 * m + (1.0 - b1) * g;
  const double vi = b2 * v + (1.0 - b2) * g * g;
  m = static_cast<T>(mi);
  v = static_cast<T>(vi);
  const double update = (mi / c.c1) / (std::sqrt(vi / c.c2) + eps);
  param = static_cast<T>(param - lr * (update + weight_decay * param));
}

}  // namespace

template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const kernels::AdamWParams& p) {
  const Corrections c = corrections(p);
  for (int64_t i = 0; i < n; ++i) adamw_one(param[i], static_cast<double>(grad[i]), m[i], v[i], p, p.weight_decay, c);
}

template <typename T, typename Out>
void adamw_fused(T* master, const T* grad, T* m, T* v, int64_t n, const kernels::AdamWRun* runs, int64_t num_runs,
                 const float* grad_scale, const kernels::AdamWParams& p, Out* out) {
  const Corrections c = corrections(p);
  // A NaN scale (a non-finite gradient norm, or a step the trainer skips) leaves everything as it is.
  if (grad_scale != nullptr && std::isnan(*grad_scale)) return;
  // The same rounding as scaling the gradient buffer in place (cpu::scale) before the update.
  const T scale = static_cast<T>(grad_scale ? *grad_scale : 1.0f);
  int64_t next = 0;
  for (int64_t r = 0; r < num_runs; ++r) {
    const kernels::AdamWRun& run = runs[r];
    MOE_CHECK(run.begin == next && run.end >= run.begin && run.end <= n, "adamw_fused: run ", r, " [", run.begin, ",",
              run.end, ") does not continue the table at ", next, " within [0,", n, ")");
    next = run.end;
    if (run.kind == kernels::AdamWRunKind::copy) continue;
    const double wd = run.kind == kernels::AdamWRunKind::decay ? static_cast<double>(p.weight_decay) : 0.0;
    for (int64_t i = run.begin; i < run.end; ++i) {
      const T g = static_cast<T>(grad[i] * scale);
      adamw_one(master[i], static_cast<double>(g), m[i], v[i], p, wd, c);
    }
  }
  MOE_CHECK(next == n, "adamw_fused: the runs cover [0,", next, ") of [0,", n, ")");
  if (out != nullptr) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Out>(master[i]);
  }
}

template <typename T>
void sum_accumulate(const T* x, int64_t n, bool squares, double weight, double* acc) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += squares ? static_cast<double>(x[i]) * static_cast<double>(x[i]) : static_cast<double>(x[i]);
  acc[0] += weight * s;
}

void clip_scale(const double* sum_sq, int64_t num, double max_norm, float* scale) {
  double total = 0;
  for (int64_t i = 0; i < num; ++i) total += sum_sq[i];
  const double norm = std::sqrt(total);
  if (!std::isfinite(norm)) {
    scale[0] = std::numeric_limits<float>::quiet_NaN();  // adamw_fused skips the update
    return;
  }
  scale[0] = max_norm > 0 && norm > max_norm ? static_cast<float>(max_norm / norm) : 1.0f;
}

void record_skipped_step(const float* scale, double* state, int64_t step) {
  if (!std::isnan(scale[0])) {
    state[1] = 0;  // the run of consecutive skips ends
    return;
  }
  state[0] += 1;
  state[1] += 1;
  state[2] = std::max(state[2], state[1]);
  if (state[3] == 0) state[3] = static_cast<double>(step);
  state[4] = static_cast<double>(step);
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, const kernels::AdamWParams&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, const kernels::AdamWParams&);
template void adamw_fused<float, float>(float*, const float*, float*, float*, int64_t, const kernels::AdamWRun*,
                                        int64_t, const float*, const kernels::AdamWParams&, float*);
template void adamw_fused<double, double>(double*, const double*, double*, double*, int64_t, const kernels::AdamWRun*,
                                          int64_t, const float*, const kernels::AdamWParams&, double*);
template void adamw_fused<double, float>(double*, const double*, double*, double*, int64_t, const kernels::AdamWRun*,
                                         int64_t, const float*, const kernels::AdamWParams&, float*);
template void sum_accumulate<float>(const float*, int64_t, bool, double, double*);
template void sum_accumulate<double>(const double*, int64_t, bool, double, double*);

}  // namespace moe::cpu

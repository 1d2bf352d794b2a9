// CPU reference AdamW (decoupled weight decay) over one contiguous parameter range, the fused
// multi-run update with the clip scale and the compute copy, and the gradient-norm reductions.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// param[n], grad[n], m[n], v[n] (updated in place):
// m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, mhat = m / (1-b1^step), vhat = v / (1-b2^step),
// param -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * param)
template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const kernels::AdamWParams& p);

// The fused update over a flat range: master[n], m[n], v[n] (updated), grad[n] times *grad_scale
// (rounded to T first, as an in-place clip would; null = 1). runs[num_runs] cover [0, n) in
// order: each run is updated as adamw_step with p.weight_decay (decay) or 0 (no_decay), or left
// alone (copy). out[n] (may be null) = the master cast to Out, every element. A NaN *grad_scale
// skips the update: master, m, v and out are left untouched.
template <typename T, typename Out>
void adamw_fused(T* master, const T* grad, T* m, T* v, int64_t n, const kernels::AdamWRun* runs, int64_t num_runs,
                 const float* grad_scale, const kernels::AdamWParams& p, Out* out);

// acc[0] += weight * sum(x[n]^2) (or of x[n] when !squares), summed in double in index order.
template <typename T>
void sum_accumulate(const T* x, int64_t n, bool squares, double weight, double* acc);

// sum_sq[num] -> norm = sqrt(sum of sum_sq, in order); scale[0] = max_norm / norm (as float) when
// max_norm > 0 and norm > max_norm, else 1; NaN when the norm is not finite (the update is skipped).
void clip_scale(const double* sum_sq, int64_t num, double max_norm, float* scale);

// The skip record of a run, state f64[5] = (skipped steps, current run of consecutive skips, the
// longest such run, the first skipped step, the last skipped step; 0 = none): step (1-based)
// counts as skipped when scale[0] is NaN (adamw_fused left the weights alone), else the current
// run ends.
void record_skipped_step(const float* scale, double* state, int64_t step);

}  // namespace moe::cpu

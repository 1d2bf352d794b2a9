// AdamW on the GPU: fp32 master weights and moments, decoupled weight decay, bias correction
// from the 1-based step; the fused multi-run form also applies the clip scale and writes the
// compute copy, and the clip scale itself is computed on the device.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// param, grad, m, v f32[n]: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// param -= lr * (wd * param + (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps))
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const kernels::AdamWParams& config,
                cudaStream_t stream);

// One launch over a flat range: master, m, v f32[n] (updated), grad f32[n] times grad_scale[0]
// (device f32; null = 1). runs (device, num_runs entries) cover [0, n) in order: update with
// config.weight_decay (decay) or 0 (no_decay), or leave alone (copy). out[n] (device, out_type;
// null = none) = the master after the update, every element (the bf16 compute copy). A NaN
// grad_scale[0] skips the update: nothing is written.
void adamw_fused(float* master, const float* grad, float* m, float* v, int64_t n, const kernels::AdamWRun* runs,
                 int64_t num_runs, const float* grad_scale, const kernels::AdamWParams& config, void* out,
                 kernels::FloatType out_type, cudaStream_t stream);

// sum_sq f64[num] (device) -> scale[0] (device f32) = max_norm / norm when max_norm > 0 and
// norm = sqrt(sum of sum_sq) > max_norm, else 1; NaN when the norm is not finite. One thread; no
// host copy.
void clip_scale(const double* sum_sq, int64_t num, double max_norm, float* scale, cudaStream_t stream);

// state f64[5] (device) as cpu::record_skipped_step: step counts as skipped when scale[0] (device
// f32) is NaN. One thread; no host copy.
void record_skipped_step(const float* scale, double* state, int64_t step, cudaStream_t stream);

}  // namespace moe::cuda

// AdamW on the GPU over one contiguous f32 range: fp32 master weights and moments, decoupled
// weight decay, bias correction from the 1-based step.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// param, grad, m, v f32[n]: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// param -= lr * (wd * param + (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps))
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const kernels::AdamWParams& config,
                cudaStream_t stream);

}  // namespace moe::cuda

// AdamW on the GPU over one contiguous f32 range: fp32 master weights and moments, decoupled
// weight decay, bias correction from the 1-based step.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace moe::cuda {

struct AdamWConfig {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t step = 1;
};

// param, grad, m, v f32[n]: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// param -= lr * (wd * param + (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps))
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWConfig& config,
                cudaStream_t stream);

}  // namespace moe::cuda

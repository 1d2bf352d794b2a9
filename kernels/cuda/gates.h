// Router gates on the GPU: noisy top-k logits (f32, Shazeer et al. 2017) and the sigmoid row
// gate of shared experts (bf16 storage, fp32 arithmetic).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// clean, raw_noise, normal f32[n] -> h[n] = clean + normal * softplus(raw_noise)
void noisy_logits_forward(const float* clean, const float* raw_noise, const float* normal, float* h, int64_t n,
                          cudaStream_t stream);
// raw_noise, normal, dh f32[n] -> dclean = dh, draw_noise = dh * normal * sigmoid(raw_noise) (written)
void noisy_logits_backward(const float* raw_noise, const float* normal, const float* dh, float* dclean,
                           float* draw_noise, int64_t n, cudaStream_t stream);

// x[T,d], gate[T] (bf16) -> y[T,d] = sigmoid(gate[t]) * x[t,:] (bf16)
void row_gate_forward(const __nv_bfloat16* x, const __nv_bfloat16* gate, __nv_bfloat16* y, int64_t tokens,
                      int64_t dim, cudaStream_t stream);
// x, gate, dy -> dx[T,d] = sigmoid(gate) * dy, dgate[T] = sigmoid'(gate) * <dy[t], x[t]> (bf16,
// written; the dot product in fp32)
void row_gate_backward(const __nv_bfloat16* x, const __nv_bfloat16* gate, const __nv_bfloat16* dy,
                       __nv_bfloat16* dx, __nv_bfloat16* dgate, int64_t tokens, int64_t dim, cudaStream_t stream);

}  // namespace moe::cuda

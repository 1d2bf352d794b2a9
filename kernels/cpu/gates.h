// CPU reference elementwise gates of the routers: noisy top-k logits (Shazeer et al. 2017)
// and the sigmoid row gate of shared experts (Qwen2-MoE). Computed in double.
#pragma once

#include <cstdint>

namespace moe::cpu {

// clean, raw_noise, normal [n] -> h[n] = clean + normal * softplus(raw_noise)
template <typename T>
void noisy_logits_forward(const T* clean, const T* raw_noise, const T* normal, T* h, int64_t n);
// raw_noise, normal, dh [n] -> dclean = dh, draw_noise = dh * normal * sigmoid(raw_noise) (written)
template <typename T>
void noisy_logits_backward(const T* raw_noise, const T* normal, const T* dh, T* dclean, T* draw_noise, int64_t n);

// x[T,d], gate[T] -> y[T,d] = sigmoid(gate[t]) * x[t,:]
template <typename T>
void row_gate_forward(const T* x, const T* gate, T* y, int64_t tokens, int64_t dim);
// x, gate, dy -> dx[T,d] = sigmoid(gate) * dy, dgate[T] = sigmoid'(gate) * <dy[t], x[t]> (written)
template <typename T>
void row_gate_backward(const T* x, const T* gate, const T* dy, T* dx, T* dgate, int64_t tokens, int64_t dim);

}  // namespace moe::cpu

// Balancing losses and the aux-loss-free bias update on the GPU (CPU references:
// kernels/cpu/balance.h): no copy to the host, every reduction in a fixed order (deterministic).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace moe::cuda {

// Common to all: float inputs and gradients (the accum dtype), sums in double, value f64[1]
// written, gradients added (+=); ids i32 with -1 = no expert (an id outside [-1, E) counts for no
// expert); no host wait.

// score_sums f32[E] and the slots per expert, count_i: counts i64[E], or (counts = nullptr) counted
// from ids i32[tokens*slots] -> value = alpha * E * sum_i f_i P_i, grad_row f32[E] = alpha * E * f_i / T
// (written), f_i = count_i / (slots T), P_i = score_sums_i / T, T = max(tokens, 1).
void switch_balance(const float* score_sums, const int32_t* ids, const int64_t* counts, int64_t tokens, int64_t slots,
                    int64_t num_experts, double alpha, double* value, float* grad_row, cudaStream_t stream);
// The same sums and counts -> value = alpha * sum_g f'_g P'_g over `groups` contiguous groups,
// grad_row f32[E] = alpha f'_{g(i)} / T (written); f'_g = mean over g of E count_i / (slots T),
// P'_g = sum over g of score_sums_i / T. groups divides E.
void device_balance(const float* score_sums, const int32_t* ids, const int64_t* counts, int64_t tokens, int64_t slots,
                    int64_t num_experts, int64_t groups, double alpha, double* value, float* grad_row,
                    cudaStream_t stream);
// counts i64[E] += the slots of ids[num_ids] per expert.
void count_experts(const int32_t* ids, int64_t num_ids, int64_t num_experts, int64_t* counts, cudaStream_t stream);
// weights f32[num_slots], ids -> value = coef CV(I)^2 (I_i = weights summed per expert),
// dweights[num_slots] += coef dCV^2/dI_{ids}.
void importance_balance(const float* weights, const int32_t* ids, int64_t num_slots, int64_t num_experts, double coef,
                        double* value, float* dweights, cudaStream_t stream);
// logits f32[T,E] -> value = coef/T sum_t lse_t^2; dlogits[T,E] += coef 2 lse_t softmax_tj / T.
void z_balance(const float* logits, int64_t tokens, int64_t num_experts, double coef, double* value, float* dlogits,
               cudaStream_t stream);
// scores f32[T,E], ids i32[T,slots], seq_len | T -> value = coef * mean over sequences of
// sum_i f_i P_i (kernels/cpu/balance.h), dscores[T,E] += its gradient; a token whose scores sum
// to <= 0 gives NaN or Inf.
void seq_balance(const float* scores, const int32_t* ids, int64_t tokens, int64_t num_experts, int64_t slots,
                 int64_t seq_len, double coef, double* value, float* dscores, cudaStream_t stream);
// clean, raw_noise, normal f32[T,E], 1 <= k < E -> value = coef CV(Load)^2 with the smooth
// estimator of noisy top-k gating; dclean, draw_noise [T,E] += its gradients.
void load_balance(const float* clean, const float* raw_noise, const float* normal, int64_t tokens, int64_t num_experts,
                  int64_t k, double coef, double* value, float* dclean, float* draw_noise, cudaStream_t stream);
// bias f32[E] -= gamma * sign(E loads_i - sum loads), loads i64[E]; a NaN *skip (f32 on the
// device, may be null) leaves bias alone.
void update_expert_bias(float* bias, const int64_t* loads, int64_t num_experts, double gamma, const float* skip,
                        cudaStream_t stream);

}  // namespace moe::cuda

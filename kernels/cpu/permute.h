// CPU reference token permutation for dropless MoE: sort (token, slot) pairs by expert, and
// combine expert outputs back per token with the gate weights (forward and backward).
#pragma once

#include <cstdint>

namespace moe::cpu {

// ids i32[T,k] -> sorted_tokens i32[T*k] (token of each row, rows grouped by expert, stable:
// by expert, then token, then slot), slot_pos i32[T*k] (row of slot t*k+s), counts[E]
// (tokens per expert). An id outside [0, E) is an error.
void moe_sort_by_expert(const int32_t* ids, int64_t num_tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* counts);

// y_sorted[T*k,d], slot_pos i32[T*k], weights[T,k] -> out[T,d] = sum_s w[t,s] y_sorted[slot_pos[t*k+s]]
template <typename T>
void moe_combine_forward(const T* y_sorted, const int32_t* slot_pos, const T* weights, T* out, int64_t num_tokens,
                         int64_t k, int64_t dim);

// y_sorted, slot_pos, weights, dout[T,d] -> dy_sorted[T*k,d] = w[t,s] dout[t] at row slot_pos[t*k+s]
// (written; rows no slot points at are zero), dweights[T,k] = dout[t] . y_sorted[slot_pos] (written)
template <typename T>
void moe_combine_backward(const T* y_sorted, const int32_t* slot_pos, const T* weights, const T* dout, T* dy_sorted,
                          T* dweights, int64_t num_tokens, int64_t k, int64_t dim);

}  // namespace moe::cpu

// CPU reference token permutation for MoE: sort (token, slot) pairs by expert, and combine
// expert outputs back per token with the gate weights (forward and backward). Slots with
// expert id -1 (dropped by capacity, or not chosen) take no row and contribute nothing.
#pragma once

#include <cstdint>

namespace moe::cpu {

// ids i32[T,k] -> sorted_tokens i32[T*k] (token of each row, rows grouped by expert, stable:
// by expert, then token, then slot; rows past sum(counts) are -1), slot_pos i32[T*k] (row of
// slot t*k+s, -1 for a slot with id -1), counts[E] (rows per expert). An id outside [-1, E) is
// an error.
void moe_sort_by_expert(const int32_t* ids, int64_t num_tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* counts);

// y_sorted[N,d], slot_pos i32[T*k] (a row in [0, N), or -1), weights[T,k] or nullptr (all 1),
// add_a, add_b [T,d] or nullptr -> out[T,d] = add_a[t] + add_b[t] + the sum over slots with a row
// of w[t,s] y_sorted[slot_pos[t*k+s]] (one sum in double; out may be add_a or add_b)
template <typename T>
void moe_combine_forward(const T* y_sorted, const int32_t* slot_pos, const T* weights, T* out, int64_t num_tokens,
                         int64_t k, int64_t dim, int64_t num_rows, const T* add_a = nullptr, const T* add_b = nullptr);

// y_sorted, slot_pos, weights, dout[T,d] -> dy_sorted[N,d] = w[t,s] dout[t] at row slot_pos[t*k+s]
// (written; rows no slot points at are zero), dweights[T,k] = dout[t] . y_sorted[slot_pos]
// (written; 0 for a slot without a row)
template <typename T>
void moe_combine_backward(const T* y_sorted, const int32_t* slot_pos, const T* weights, const T* dout, T* dy_sorted,
                          T* dweights, int64_t num_tokens, int64_t k, int64_t dim, int64_t num_rows);

// The combine's backward with its weights left to the experts (an expert backward that applies
// them: Experts::backward_weighted): dy_sorted[slot_pos[t*k+s]] = dout[t] and row_weights[that row]
// = weights[t,s] for every slot with a row; rows no slot points at get zeros in both.
template <typename T>
void moe_combine_backward_unweighted(const int32_t* slot_pos, const T* weights, const T* dout, T* dy_sorted,
                                     T* row_weights, int64_t num_tokens, int64_t k, int64_t dim, int64_t num_rows);

// x_sorted[slot_pos[t*k+s]] = x[t] for every slot with a row; rows no slot points at are zero.
template <typename T>
void moe_scatter_rows(const T* x, const int32_t* slot_pos, T* x_sorted, int64_t num_tokens, int64_t k, int64_t dim,
                      int64_t num_rows);

// slot_values[n] = row_values[slot_pos[n]] for n < num_slots, 0 where slot_pos[n] = -1
template <typename T>
void moe_gather_slots(const T* row_values, const int32_t* slot_pos, T* slot_values, int64_t num_slots, int64_t num_rows);

}  // namespace moe::cpu

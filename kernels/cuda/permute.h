// Token permutation for MoE on the GPU: the stable expert-sorted order of (token, slot) pairs,
// and the weighted combine of expert outputs back into token order. A slot with expert id -1
// (dropped, or not chosen) takes no row and contributes nothing.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// ids i32[tokens,k] (slot n = t*k + s) -> sorted_tokens i32[tokens*k] (token of each row in
// sorted order: by expert, then token, then slot; rows past sum(counts) are -1), slot_pos
// i32[tokens*k] (sorted row of slot n, -1 where ids[n] = -1), host_counts[num_experts] (rows
// per expert). Synchronises the stream (counts go to the host); throws naming an offending id
// when one is outside [-1, num_experts).
void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* host_counts, cudaStream_t stream);
// The same sort without a host wait: offsets i32[num_experts+1] (device) = where each expert's
// rows begin, offsets[E] = rows used. An id outside [-1, num_experts) takes no row (it is not
// reported: the routers that feed this variant produce ids in range by construction).
void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int32_t* offsets, cudaStream_t stream);
// The no-wait sort with the rows moved in the same pass (one block per chunk of slots places them
// and copies their rows): also x_sorted[r,:] = x[sorted_tokens[r],:] for r < num_rows, and rows
// [offsets[E], num_rows) zero, as a gather of token -1 gives. x[tokens, row_bytes] and
// x_sorted[num_rows, row_bytes] hold any element type (rows are copied as bytes), num_rows <= tokens*k.
void moe_permute_rows(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, const void* x,
                      int64_t row_bytes, int32_t* sorted_tokens, int32_t* slot_pos, int32_t* offsets, void* x_sorted,
                      int64_t num_rows, cudaStream_t stream);

// out[t,:] = add_a[t,:] + add_b[t,:] + sum_s weights[t,s] * y_sorted[slot_pos[t*k+s], :] over
// slots with slot_pos >= 0; y_sorted[N, dim] bf16 (N >= the rows used), weights f32[tokens,k] or
// nullptr (all 1: the un-permute sum), add_a, add_b bf16 [tokens,dim] or nullptr (none; out may be
// one of them), out[tokens,dim] bf16 (one fp32 sum). Rows are not range-checked (that would need a sync).
void moe_combine_forward(const __nv_bfloat16* y_sorted, const int32_t* slot_pos, const float* weights,
                         __nv_bfloat16* out, int64_t tokens, int64_t k, int64_t dim, cudaStream_t stream,
                         const __nv_bfloat16* add_a = nullptr, const __nv_bfloat16* add_b = nullptr);
// dy_sorted[N, dim]: row slot_pos[t*k+s] = weights[t,s] * dout[t,:], rows no slot uses are
// zero (written); dweights[t,s] = <dout[t,:], y_sorted[slot_pos[t*k+s], :]> (f32), 0 for a
// slot without a row. Distinct slots must use distinct rows.
void moe_combine_backward(const __nv_bfloat16* y_sorted, const int32_t* slot_pos, const float* weights,
                          const __nv_bfloat16* dout, __nv_bfloat16* dy_sorted, float* dweights, int64_t tokens,
                          int64_t k, int64_t dim, int64_t num_rows, cudaStream_t stream);

// The combine's backward without its weights: dy_sorted[slot_pos[n]] = dout[n / k] (bf16 copy),
// row_weights[slot_pos[n]] = weights[n] for every slot with a row; rows no slot uses are zero in
// both (written). Distinct slots must use distinct rows.
void moe_combine_backward_unweighted(const int32_t* slot_pos, const float* weights, const __nv_bfloat16* dout,
                                     __nv_bfloat16* dy_sorted, float* row_weights, int64_t tokens, int64_t k,
                                     int64_t dim, int64_t num_rows, cudaStream_t stream);
// The dispatch's row move again from its saved sort: x_sorted[slot_pos[t*k+s]] = x[t] (rows of
// row_bytes, any dtype) for every slot with a row, each x row read once; rows no slot uses are zero.
// Distinct slots must use distinct rows. Equals gather_rows(x, sorted_tokens) without its k reads of
// each row.
void moe_scatter_rows(const void* x, const int32_t* slot_pos, void* x_sorted, int64_t tokens, int64_t k,
                      int64_t row_bytes, int64_t num_rows, cudaStream_t stream);
// slot_values[n] = row_values[slot_pos[n]] (0 where slot_pos[n] = -1), n < num_slots
void moe_gather_slots(const float* row_values, const int32_t* slot_pos, float* slot_values, int64_t num_slots,
                      cudaStream_t stream);

}  // namespace moe::cuda

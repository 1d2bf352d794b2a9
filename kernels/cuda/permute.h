// Token permutation for dropless MoE on the GPU: the stable expert-sorted order of (token,
// slot) pairs, and the weighted combine of expert outputs back into token order.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// ids i32[tokens,k] (slot n = t*k + s) -> sorted_tokens i32[tokens*k] (token of each row in
// sorted order: by expert, then token, then slot), slot_pos i32[tokens*k] (sorted row of slot
// n), host_counts[num_experts] (tokens per expert). Synchronises the stream (counts go to the
// host); throws naming an offending id when one is outside [0, num_experts).
void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* host_counts, cudaStream_t stream);

// out[t,:] = sum_s weights[t,s] * y_sorted[slot_pos[t*k+s], :]; y_sorted[tokens*k, dim] bf16,
// weights f32[tokens,k], out[tokens,dim] bf16 (fp32 sum).
void moe_combine_forward(const __nv_bfloat16* y_sorted, const int32_t* slot_pos, const float* weights,
                         __nv_bfloat16* out, int64_t tokens, int64_t k, int64_t dim, cudaStream_t stream);
// dy_sorted[slot_pos[t*k+s], :] = weights[t,s] * dout[t,:] (every sorted row written once when
// slot_pos is a permutation), dweights[t,s] = <dout[t,:], y_sorted[slot_pos[t*k+s], :]> (f32).
void moe_combine_backward(const __nv_bfloat16* y_sorted, const int32_t* slot_pos, const float* weights,
                          const __nv_bfloat16* dout, __nv_bfloat16* dy_sorted, float* dweights, int64_t tokens,
                          int64_t k, int64_t dim, cudaStream_t stream);

}  // namespace moe::cuda

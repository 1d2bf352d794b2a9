// Top-k router on the GPU (f32 logits, scores and weights; i32 expert ids) and its backward:
// softmax or sigmoid scores, selection on scores + bias (optionally group-limited), weights
// plain, renormalised or a softmax over the selected logits. One warp per token.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// T = tokens, E = num_experts, k = options.k.
// logits[T,E], bias[E] (nullptr = none) -> scores[T,E], ids[T,k] = the k largest keys
// (scores + bias; only experts of the top_groups groups, ranked by their largest key, when
// grouped) in descending order, ties to the lower index; weights[T,k] from the unbiased
// scores. E + num_groups <= 12288.
// With score_sums f32[E] and counts i64[E] (both or neither; written): the Switch statistics of
// the same pass, the scores summed over the tokens and the slots routed to each expert, in a
// fixed order (the same run to run on one GPU model). Needs router_sums_fused(E, num_groups).
void router_topk_forward(const float* logits, const float* bias, float* scores, int32_t* ids, float* weights,
                         int64_t tokens, int64_t num_experts, const kernels::TopKOptions& options,
                         cudaStream_t stream, float* score_sums = nullptr, int64_t* counts = nullptr);
// Whether the routing pass makes the statistics: E <= 256 (its last block adds every block's
// partial row) within 48 KB of shared memory.
bool router_sums_fused(int64_t num_experts, int64_t num_groups);
// logits, scores[T,E], ids, weights, dweights[T,k], dscores[T,E] (nullptr = none), dscore_row[E]
// (nullptr = none; added to every token's score gradient) -> dlogits[T,E] (written): dweights
// through the weight normalisation into d scores (or, for softmax_after_topk, straight into the
// selected logits), plus dscores and dscore_row, then through the score function. Ids within a
// row must be distinct.
void router_topk_backward(const float* logits, const float* scores, const int32_t* ids, const float* weights,
                          const float* dweights, const float* dscores, const float* dscore_row, float* dlogits,
                          int64_t tokens, int64_t num_experts, const kernels::TopKOptions& options,
                          cudaStream_t stream);

}  // namespace moe::cuda

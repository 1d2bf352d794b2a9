// Top-k router on the GPU (f32 logits, scores and weights; i32 expert ids) and its backward:
// softmax or sigmoid scores, selection on scores + bias (optionally group-limited), weights
// plain, renormalised or a softmax over the selected logits. One warp per token.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace moe::cuda {

// The options of ops::TopKOptions as a POD.
struct TopKRouting {
  int64_t tokens = 0, num_experts = 0, k = 1;
  bool sigmoid = false;             // scores = sigmoid(logits), else softmax over the experts
  bool renormalize = false;         // weights = selected scores / their sum (implied by sigmoid)
  bool softmax_after_topk = false;  // weights = softmax over the selected logits (softmax only)
  int64_t num_groups = 0, top_groups = 0;  // group-limited selection; 0 = off
};

// logits[T,E], bias[E] (nullptr = none) -> scores[T,E], ids[T,k] = the k largest keys
// (scores + bias; only experts of the top_groups groups, ranked by their largest key, when
// grouped) in descending order, ties to the lower index; weights[T,k] from the unbiased
// scores. E + num_groups <= 12288.
void router_topk_forward(const float* logits, const float* bias, float* scores, int32_t* ids, float* weights,
                         const TopKRouting& r, cudaStream_t stream);
// logits, scores[T,E], ids, weights, dweights[T,k], dscores[T,E] (nullptr = none)
// -> dlogits[T,E] (written): dweights through the weight normalisation into d scores (or, for
// softmax_after_topk, straight into the selected logits), plus dscores, then through the
// score function. Ids within a row must be distinct.
void router_topk_backward(const float* logits, const float* scores, const int32_t* ids, const float* weights,
                          const float* dweights, const float* dscores, float* dlogits, const TopKRouting& r,
                          cudaStream_t stream);

}  // namespace moe::cuda

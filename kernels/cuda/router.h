// Router softmax + top-k on the GPU (f32 logits, probabilities and weights; i32 expert ids)
// and its backward. One warp per token.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace moe::cuda {

struct RouterShape {
  int64_t tokens = 0, num_experts = 0, k = 0;
};

// logits[T,E] -> probs[T,E] = softmax, ids[T,k] = the k most probable experts in descending
// order (ties to the lower index), weights[T,k] = probs at ids (divided by their sum when
// renormalize). E <= 12288.
void softmax_topk_forward(const float* logits, float* probs, int32_t* ids, float* weights, const RouterShape& shape,
                          bool renormalize, cudaStream_t stream);
// dlogits[T,E] (written) from dweights[T,k] and expert_grad[E] (added to d loss/d probs of every
// token): dp = expert_grad + scatter(dweights through the renormalisation), then the softmax
// backward dlogits = p * (dp - sum(p * dp)). ids within a row must be distinct.
void softmax_topk_backward(const float* probs, const int32_t* ids, const float* weights, const float* dweights,
                           const float* expert_grad, float* dlogits, const RouterShape& shape, bool renormalize,
                           cudaStream_t stream);

}  // namespace moe::cuda

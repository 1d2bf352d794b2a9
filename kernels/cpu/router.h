// CPU reference softmax top-k router: probabilities, expert choice and gate weights, and the
// backward through the gates (and optional renormalisation) to the logits.
#pragma once

#include <cstdint>

namespace moe::cpu {

// logits[T,E] -> probs[T,E] = softmax over all experts, ids i32[T,k] = the k most probable
// experts in descending order (ties to the lower index), weights[T,k] = probs at ids, divided
// by their sum when renormalize.
template <typename T>
void softmax_topk_forward(const T* logits, T* probs, int32_t* ids, T* weights, int64_t num_tokens, int64_t num_experts,
                          int64_t k, bool renormalize);

// probs[T,E], ids i32[T,k], dweights[T,k], expert_grad[E] -> dlogits[T,E] (written), where
// d loss / d probs[t,i] = expert_grad[i] + the part from the weights of token t.
template <typename T>
void softmax_topk_backward(const T* probs, const int32_t* ids, const T* dweights, const T* expert_grad, T* dlogits,
                           int64_t num_tokens, int64_t num_experts, int64_t k, bool renormalize);

}  // namespace moe::cpu

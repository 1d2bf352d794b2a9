// CPU reference top-k router: softmax or sigmoid scores, selection on scores + bias (optionally
// group-limited), gate weights (plain, renormalised, or Mixtral's softmax over the selected
// logits), and the backward through the weights and the score function to the logits.
#pragma once

#include <cstdint>

namespace moe::cpu {

// The options of ops::TopKOptions as a POD (kernels never see the ops layer).
struct TopKRouting {
  int64_t tokens = 0, num_experts = 0, k = 1;
  bool sigmoid = false;             // scores = sigmoid(logits), else softmax over the experts
  bool renormalize = false;         // weights = selected scores / their sum (implied by sigmoid)
  bool softmax_after_topk = false;  // weights = softmax over the selected logits (softmax only)
  int64_t num_groups = 0, top_groups = 0;  // group-limited selection; 0 = off
};

// Whether the weights are the selected scores divided by their sum (sigmoid routers always are).
inline bool renormalizes(const TopKRouting& r) { return !r.softmax_after_topk && (r.renormalize || r.sigmoid); }

// logits[T,E], bias[E] (nullptr = none) -> scores[T,E], ids i32[T,k], weights[T,k].
// Selection key = scores + bias (in T); the top-k are taken in descending key order, ties to
// the lower index. With groups, only experts of the top_groups groups (ranked by their largest
// key, ties to the lower group) compete. Weights never see the bias.
template <typename T>
void router_topk_forward(const T* logits, const T* bias, T* scores, int32_t* ids, T* weights,
                         const TopKRouting& r);

// logits, scores[T,E], ids i32[T,k], weights, dweights[T,k], dscores[T,E] (nullptr = none)
// -> dlogits[T,E] (written). Ids must be distinct within a row.
template <typename T>
void router_topk_backward(const T* logits, const T* scores, const int32_t* ids, const T* weights, const T* dweights,
                          const T* dscores, T* dlogits, const TopKRouting& r);

}  // namespace moe::cpu

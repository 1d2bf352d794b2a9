// CPU reference top-k router: softmax or sigmoid scores, selection on scores + bias (optionally
// group-limited), gate weights (plain, renormalised, or Mixtral's softmax over the selected
// logits), and the backward through the weights and the score function to the logits.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// logits[T,E], bias[E] (nullptr = none) -> scores[T,E], ids i32[T,k], weights[T,k]; T = tokens,
// E = num_experts, k = options.k.
// Selection key = scores + bias (in T); the top-k are taken in descending key order, ties to
// the lower index. With groups, only experts of the top_groups groups (ranked by their largest
// key, ties to the lower group) compete. Weights never see the bias.
// The Switch statistics of the same pass (each nullptr = not wanted; written): score_sums[E] = the
// scores summed over the tokens (in double, token order), counts i64[E] = the slots routed to each
// expert.
template <typename T>
void router_topk_forward(const T* logits, const T* bias, T* scores, int32_t* ids, T* weights, int64_t tokens,
                         int64_t num_experts, const kernels::TopKOptions& options, T* score_sums = nullptr,
                         int64_t* counts = nullptr);

// logits, scores[T,E], ids i32[T,k], weights, dweights[T,k], dscores[T,E] (nullptr = none),
// dscore_row[E] (nullptr = none: a score gradient the same for every token, as the per-expert
// balancing terms make) -> dlogits[T,E] (written). Ids must be distinct within a row.
template <typename T>
void router_topk_backward(const T* logits, const T* scores, const int32_t* ids, const T* weights, const T* dweights,
                          const T* dscores, T* dlogits, int64_t tokens, int64_t num_experts,
                          const kernels::TopKOptions& options, const T* dscore_row = nullptr);

}  // namespace moe::cpu

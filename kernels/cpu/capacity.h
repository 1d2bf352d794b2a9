// CPU reference per-expert capacity: expert-choice routing (each expert takes its top-c
// tokens) and the capacity limit of token-choice routing (drop the slots past c per expert).
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// scores[T,E] -> ids i32[T,E] (e where expert e took token t, else -1), weights[T,E] (the
// score where taken, else 0). Each expert takes its min(capacity, T) highest-scoring tokens,
// ties to the lower token.
template <typename T>
void expert_choice_forward(const T* scores, int32_t* ids, T* weights, int64_t tokens, int64_t num_experts,
                           int64_t capacity);

// ids i32[n], dweights[n] -> dscores[n] += dweights where ids >= 0
template <typename T>
void expert_choice_backward(const int32_t* ids, const T* dweights, T* dscores, int64_t n);

// ids i32[T,k], weights[T,k] (in place): each expert keeps at most `capacity` of its slots,
// the others become id -1 and weight 0. Priority by_probability: weight descending, then
// token, then slot; by_position: slot-major then token (every first choice before any second).
// Slots already -1 are skipped; an id outside [-1, E) is an error. Returns the slots dropped.
template <typename T>
int64_t apply_capacity(int32_t* ids, T* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                       kernels::DropOrder order);

}  // namespace moe::cpu

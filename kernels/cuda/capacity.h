// Per-expert capacity on the GPU: expert-choice routing, its backward, and the capacity limit
// of token-choice routing. f32 scores and weights, i32 ids.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// scores[T,E] -> ids i32[T,E] (e where expert e took token t, else -1), weights[T,E] (score
// where taken, else 0); each expert takes its min(capacity, T) highest-scoring tokens, ties to
// the lower token. No host wait.
void expert_choice_forward(const float* scores, int32_t* ids, float* weights, int64_t tokens, int64_t num_experts,
                           int64_t capacity, cudaStream_t stream);
// ids i32[n], dweights[n] -> dscores[n] += dweights where ids >= 0
void expert_choice_backward(const int32_t* ids, const float* dweights, float* dscores, int64_t n, cudaStream_t stream);

// ids i32[T,k], weights[T,k] in place: each expert keeps at most `capacity` of its slots (by
// weight, ties to the lower token then slot; or slot-major by position), the rest become -1 and
// 0. *dropped (device) = the slots dropped; *bad (device, may be null) = ((slot + 1) << 32) | id
// for an id outside [-1, E) (such slots are left alone), else 0. No host wait.
void apply_capacity(int32_t* ids, float* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                    kernels::DropOrder order, unsigned long long* dropped, unsigned long long* bad,
                    cudaStream_t stream);
// The same, returning the count (synchronises) and throwing naming an id outside [-1, E).
int64_t apply_capacity(int32_t* ids, float* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                       kernels::DropOrder order, cudaStream_t stream);

}  // namespace moe::cuda

// Balancing statistics on the GPU: the Switch loss from per-expert score sums and the expert ids,
// so a step computes it without copying scores or counts to the host.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace moe::cuda {

// score_sums f32[E], ids i32[tokens*slots] (-1 = no expert; an id outside [-1, E) counts for no
// expert) -> value f64[1] = alpha * E * sum_i f_i P_i, grad_row f32[E] = alpha * E * f_i / T,
// f_i = count_i / (slots T), P_i = score_sums_i / T, T = max(tokens, 1). One block; no host wait.
void switch_balance(const float* score_sums, const int32_t* ids, int64_t tokens, int64_t slots, int64_t num_experts,
                    double alpha, double* value, float* grad_row, cudaStream_t stream);

}  // namespace moe::cuda

// CPU reference of the balancing statistics made on the device: the Switch loss from per-expert
// score sums and the expert ids, value and per-expert gradient in one pass.
#pragma once

#include <cstdint>

namespace moe::cpu {

// score_sums[E] (sum over tokens of the router scores), ids i32[tokens*slots] (-1 = no expert)
// -> value[0] = alpha * E * sum_i f_i P_i and grad_row[E] = alpha * E * f_i / T, with
// f_i = count_i / (slots T), P_i = score_sums_i / T, T = max(tokens, 1). Ids outside [-1, E)
// are an error.
template <typename T>
void switch_balance(const T* score_sums, const int32_t* ids, int64_t tokens, int64_t slots, int64_t num_experts,
                    double alpha, double* value, T* grad_row);

}  // namespace moe::cpu

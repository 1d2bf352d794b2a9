// CPU reference learned absolute positions: x[t] += pos[t % seq_len] and its backward.
// Raw pointers only; rows are whole sequences of seq_len tokens.
#pragma once

#include <cstdint>

namespace moe::cpu {

// x[T,d] += pos[t % seq_len] with pos[S_max,d], T a multiple of seq_len, seq_len <= S_max
template <typename T>
void position_add_forward(T* x, const T* pos, int64_t num_tokens, int64_t dim, int64_t seq_len);

// dx[T,d] -> dpos[S_max,d] += sum over sequences of dx rows at each position
template <typename T>
void position_add_backward(const T* dx, T* dpos, int64_t num_tokens, int64_t dim, int64_t seq_len);

}  // namespace moe::cpu

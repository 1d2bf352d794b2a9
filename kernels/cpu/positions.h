// CPU reference learned absolute positions: x[t] += pos[t % seq_len] and its backward.
// Raw pointers only; rows are whole sequences of seq_len tokens.
#pragma once

#include <cstdint>

namespace moe::cpu {

// x[T,d] += pos[p(t)] with pos[S_max,d], T a multiple of seq_len, seq_len <= S_max, and
// p(t) = t % seq_len, or t % seq_len - doc_starts[t] (its position in its document) when
// doc_starts i32[T] is given
template <typename T>
void position_add_forward(T* x, const T* pos, int64_t num_tokens, int64_t dim, int64_t seq_len,
                          const int32_t* doc_starts = nullptr);

// dx[T,d] -> dpos[S_max,d] += the dx rows of the tokens at each position p(t), in token order
template <typename T>
void position_add_backward(const T* dx, T* dpos, int64_t num_tokens, int64_t dim, int64_t seq_len,
                           const int32_t* doc_starts = nullptr);

}  // namespace moe::cpu

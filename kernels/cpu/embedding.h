// CPU reference token embedding: row lookup forward, scatter-add of row gradients backward.
// Raw pointers only; ids outside [0, V) are an error naming the id.
#pragma once

#include <cstdint>

namespace moe::cpu {

// ids i32[T], table[V,d] -> out[T,d]
template <typename T>
void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t num_tokens, int64_t vocab, int64_t dim);

// ids i32[T], dout[T,d] -> dtable[V,d] += dout rows at ids (repeated ids add up)
template <typename T>
void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t num_tokens, int64_t vocab, int64_t dim);

}  // namespace moe::cpu

// CPU reference token embedding: row lookup forward, scatter-add of row gradients backward.
// Raw pointers only; ids outside the vocabulary are an error naming the id.
#pragma once

#include <cstdint>

namespace moe::cpu {

// Vocabulary sharding (tensor parallelism, rows of the table split over ranks): the table holds
// rows [vocab_start, vocab_start + vocab) of a vocabulary of vocab_full ids. vocab_full == 0
// means unsharded (vocab_start must be 0): ids must lie in [0, vocab).

// ids i32[T], table[vocab,d] -> out[T,d]: row ids[t] - vocab_start where the id is local, a
// zero row where it belongs to another shard; ids outside [0, vocab_full) are an error.
template <typename T>
void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t num_tokens, int64_t vocab, int64_t dim,
                       int64_t vocab_start, int64_t vocab_full);

// ids i32[T], dout[T,d] -> dtable[vocab,d] += dout rows at the local ids (repeated ids add up;
// ids of other shards add nothing)
template <typename T>
void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t num_tokens, int64_t vocab, int64_t dim,
                        int64_t vocab_start, int64_t vocab_full);

}  // namespace moe::cpu

// Token embeddings and learned absolute positions on the GPU: bf16 tables and activations,
// f32 table gradients.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// Vocabulary sharding (tensor parallelism): the table holds rows [vocab_start, vocab_start +
// vocab) of a vocabulary of vocab_full ids; vocab_full == 0 means unsharded (vocab_start 0).

// ids i32[tokens], table[vocab,dim] -> out[tokens,dim]: row id - vocab_start for local ids, a
// zero row for ids of other shards. Ids outside [0, vocab_full) ([0, vocab) unsharded) give NaN
// rows (not checked on the host: that would synchronise).
void embedding_forward(const int32_t* ids, const __nv_bfloat16* table, __nv_bfloat16* out, int64_t tokens,
                       int64_t vocab, int64_t dim, int64_t vocab_start, int64_t vocab_full, cudaStream_t stream);
// dtable[vocab,dim] (f32) += dout[tokens,dim] rows at the local ids (f32 atomics; ids of other
// shards and out of range skipped)
void embedding_backward(const int32_t* ids, const __nv_bfloat16* dout, float* dtable, int64_t tokens, int64_t vocab,
                        int64_t dim, int64_t vocab_start, int64_t vocab_full, cudaStream_t stream);

// x[tokens,dim] += pos[p(t), :] with p(t) = t % seq_len, or t % seq_len - doc_starts[t] (the
// position inside the token's document) when doc_starts i32[tokens] is given (nullptr = none)
void position_add_forward(__nv_bfloat16* x, const __nv_bfloat16* pos, int64_t tokens, int64_t dim, int64_t seq_len,
                          const int32_t* doc_starts, cudaStream_t stream);
// dpos[s,:] (f32) += the dx rows of the tokens at position s. Without doc_starts: the sum over
// sequences b of dx[b*seq_len + s, :] in order (no atomics); with them, f32 atomics per token.
void position_add_backward(const __nv_bfloat16* dx, float* dpos, int64_t tokens, int64_t dim, int64_t seq_len,
                           const int32_t* doc_starts, cudaStream_t stream);

}  // namespace moe::cuda

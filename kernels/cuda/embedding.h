// Token embeddings and learned absolute positions on the GPU: bf16 tables and activations,
// f32 table gradients.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// ids i32[tokens], table[vocab,dim] -> out[tokens,dim]. Ids outside [0, vocab) give NaN rows
// (not checked on the host: that would synchronise).
void embedding_forward(const int32_t* ids, const __nv_bfloat16* table, __nv_bfloat16* out, int64_t tokens,
                       int64_t vocab, int64_t dim, cudaStream_t stream);
// dtable[vocab,dim] (f32) += dout[tokens,dim] rows at ids (f32 atomics; ids out of range skipped)
void embedding_backward(const int32_t* ids, const __nv_bfloat16* dout, float* dtable, int64_t tokens, int64_t vocab,
                        int64_t dim, cudaStream_t stream);

// x[tokens,dim] += pos[t % seq_len, :]
void position_add_forward(__nv_bfloat16* x, const __nv_bfloat16* pos, int64_t tokens, int64_t dim, int64_t seq_len,
                          cudaStream_t stream);
// dpos[s,:] (f32) += sum over sequences b of dx[b*seq_len + s, :], for s < seq_len (no atomics)
void position_add_backward(const __nv_bfloat16* dx, float* dpos, int64_t tokens, int64_t dim, int64_t seq_len,
                           cudaStream_t stream);

}  // namespace moe::cuda

// Grouped-query attention on the GPU, causal or not: bf16 q/k/v/out, fp32 softmax statistics, no
// S x S matrix in memory. Head dims 64 and 128 run tensor-core flash kernels (flash_attention_*.cu),
// other head dims (<= 256) fp32 kernels on CUDA cores (attention.cu, attention_backward.cu).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// q[B*S, Hq*hd], k,v[B*Skv, Hkv*hd] -> out[B*S, Hq*hd], lse[B, Hq, S] (f32, natural log of the
// softmax denominator of the scaled scores), Skv = dims.kv_len() (S but for cross-attention, which
// is non-causal without doc_starts). Query head h reads kv head h / (Hq / Hkv); scores
// are q.k / sqrt(hd). head_dim <= 256. doc_starts i32[B*S] (causal only; nullptr = off): query i
// sees keys doc_starts[i] .. i (its document; the starts never decrease along a sequence), and
// key blocks before the document of a block's first query are skipped.
void attention_forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* out,
                       float* lse, const kernels::AttentionShape& dims, const int32_t* doc_starts,
                       cudaStream_t stream);

// Bytes of device scratch attention_backward needs: the row statistics delta[B, Hq, S] (f32),
// and for the flash kernels (head dims 64, 128) an fp32 dQ accumulator [B*S, Hq*hd] before it.
size_t attention_backward_workspace_bytes(const kernels::AttentionShape& dims);

// dq, dk, dv (shapes of q, k, v: dk, dv [B*Skv, Hkv*hd]) written; workspace: at least
// attention_backward_workspace_bytes, 256-byte aligned, contents ignored. dk/dv sum over the query heads sharing a kv head inside one
// block (no atomics: deterministic); the flash kernels add dq with fp32 atomics (order varies
// from run to run, in the last bits). doc_starts: the forward's.
void attention_backward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                        const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* dout, __nv_bfloat16* dq,
                        __nv_bfloat16* dk, __nv_bfloat16* dv, void* workspace, const kernels::AttentionShape& dims,
                        const int32_t* doc_starts, cudaStream_t stream);

}  // namespace moe::cuda

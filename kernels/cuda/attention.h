// Causal grouped-query attention on the GPU: bf16 q/k/v/out, fp32 softmax statistics, no
// S x S matrix in memory (online softmax forward, two-kernel recomputing backward).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// q[B*S, Hq*hd], k,v[B*S, Hkv*hd] -> out[B*S, Hq*hd], lse[B, Hq, S] (f32, natural log of the
// softmax denominator of the scaled scores). Query head h reads kv head h / (Hq / Hkv); scores
// are q.k / sqrt(hd); key j is visible to query i when j <= i. head_dim <= 256.
void attention_forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* out,
                       float* lse, const kernels::AttentionShape& dims, cudaStream_t stream);

// dq, dk, dv (shapes of q, k, v) written. dk/dv sum over the query heads sharing a kv head
// inside one block (no atomics: deterministic).
void attention_backward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                        const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* dout, __nv_bfloat16* dq,
                        __nv_bfloat16* dk, __nv_bfloat16* dv, const kernels::AttentionShape& dims, cudaStream_t stream);

}  // namespace moe::cuda

// CPU reference scaled-dot-product attention (causal or not) with grouped-query heads.
// Raw pointers only; forward saves the log-sum-exp per row, backward recomputes probabilities.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// q[B*S, Hq*hd], k[B*Skv, Hkv*hd], v[B*Skv, Hkv*hd] (, doc_starts i32[B*S]) -> out[B*S, Hq*hd],
// lse[B, Hq, S], Skv = dims.kv_len() (S unless cross-attention). Query head h reads kv head
// h / (Hq / Hkv); causal (Skv = S): row i attends to keys 0..i, else to keys 0..Skv-1 of its batch
// entry; scale 1/sqrt(hd). Document masking (causal only; doc_starts null = off):
// row i of sequence b attends to keys doc_starts[b*S + i] .. i, the tokens of its own document.
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* out, T* lse, const kernels::AttentionShape& dims,
                       const int32_t* doc_starts = nullptr);

// q, k, v, out, lse (from forward), dout[B*S, Hq*hd] (, doc_starts as in forward) -> dq, dk, dv
// (written, shapes of q, k, v: dk, dv [B*Skv, Hkv*hd])
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout, T* dq, T* dk,
                        T* dv, const kernels::AttentionShape& dims, const int32_t* doc_starts = nullptr);

}  // namespace moe::cpu

// Ops of KV-cached decoding: rotary positions at given positions, writing key/value rows into a
// per-layer cache and attention of one query row per sequence against the cache.
#pragma once

#include "src/ops/ops.h"

namespace moe::ops {

// Rotary embedding in place on x[T, H*hd] (compute dtype) with row t at position positions[t]
// (i32[T] on x's device): the forward rotation of rope() for a token at that position.
void rope_at(Tensor& x, int64_t num_heads, const Tensor& positions, float theta, const RopeScaling& scaling = {});

// rows[N, H*hd], positions i32[N], cache[B, H, L, hd] (rows' dtype and device), N a multiple of B:
// row n belongs to sequence n / (N / B); cache[b, h, positions[n], :] = rows[n, h*hd : (h+1)*hd].
// Positions outside [0, L) are an error on the CPU and skipped on the GPU.
void kv_cache_write(const Tensor& rows, const Tensor& positions, Tensor& cache);

// q[B, Hq*hd], k_cache/v_cache[B, Hkv, L, hd], lengths i32[B] -> out[B, Hq*hd]: query head h of
// sequence b attends (scale 1/sqrt(hd), no mask beyond the length) to keys 0 .. lengths[b]-1 of
// kv head h / (Hq / Hkv). A length outside [1, L] is an error on the CPU and a NaN row on the GPU.
void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                      Tensor& out);

}  // namespace moe::ops

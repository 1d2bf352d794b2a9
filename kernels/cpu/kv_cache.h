// CPU reference of KV-cached decoding: writing key/value rows into the cache and attention of one
// query row per sequence against it. Raw pointers only.
#pragma once

#include <cstdint>

namespace moe::cpu {

// The cache layout: [batch, heads, max_len, head_dim].
struct KvCacheShape {
  int64_t batch = 0, num_heads = 0, max_len = 0, head_dim = 0;
};

// rows[N, H*hd] with N a multiple of batch (row n belongs to sequence n / (N / batch)), positions
// i32[N] in [0, max_len) -> cache[b, h, positions[n], :] = rows[n, h*hd : (h+1)*hd].
template <typename T>
void kv_cache_write(const T* rows, const int32_t* positions, int64_t num_rows, T* cache, const KvCacheShape& shape);

// q[B, Hq*hd], k_cache/v_cache [B, Hkv, max_len, hd], lengths i32[B] in [1, max_len] -> out[B, Hq*hd]:
// query head h of sequence b attends (scale 1/sqrt(hd)) to the keys 0 .. lengths[b]-1 of kv head
// h / (Hq / Hkv). `shape` describes the cache (num_heads = Hkv).
template <typename T>
void decode_attention(const T* q, const T* k_cache, const T* v_cache, const int32_t* lengths, T* out,
                      int64_t num_q_heads, const KvCacheShape& shape);

}  // namespace moe::cpu

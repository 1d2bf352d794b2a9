// KV-cached decoding on the GPU: writing bf16 key/value rows into the cache and attention of
// one query row per sequence against the cached keys and values (fp32 softmax and sums).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// The cache layout: [batch, heads, max_len, head_dim].
struct KvCacheShape {
  int64_t batch = 0, num_heads = 0, max_len = 0, head_dim = 0;
};

// rows[N, H*hd], N a multiple of batch (row n belongs to sequence n / (N / batch)), positions i32[N]
// -> cache[b, h, positions[n], :] = rows[n, h*hd : (h+1)*hd]. Positions outside [0, max_len) are
// skipped (not checked on the host: that would synchronise).
void kv_cache_write(const __nv_bfloat16* rows, const int32_t* positions, int64_t num_rows, __nv_bfloat16* cache,
                    const KvCacheShape& shape, cudaStream_t stream);

// q[B, Hq*hd], k_cache/v_cache [B, Hkv, max_len, hd], lengths i32[B] -> out[B, Hq*hd]: query head h of
// sequence b attends (scale 1/sqrt(hd)) to keys 0 .. lengths[b]-1 of kv head h / (Hq / Hkv). A
// length outside [1, max_len] gives a NaN row.
void decode_attention(const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                      const int32_t* lengths, __nv_bfloat16* out, int64_t num_q_heads, const KvCacheShape& shape,
                      cudaStream_t stream);

}  // namespace moe::cuda

// KV-cache write (one thread per element) and decode attention: one block per (sequence, query
// head); the scores of its keys live in shared memory, softmax and the value sums in fp32.
#include "kernels/cuda/kv_cache.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

__global__ void kv_cache_write_kernel(const __nv_bfloat16* rows, const int32_t* positions, int64_t num_rows,
                                      __nv_bfloat16* cache, KvCacheShape s) {
  const int64_t per_seq = num_rows / s.batch, hd = s.head_dim, width = s.num_heads * hd;
  const int64_t total = num_rows * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t n = g / width, c = g - n * width, h = c / hd, i = c - h * hd;
    const int64_t p = positions[n];
    if (p < 0 || p >= s.max_len) continue;
    cache[(((n / per_seq) * s.num_heads + h) * s.max_len + p) * hd + i] = rows[g];
  }
}

__global__ void decode_attention_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k_cache,
                                        const __nv_bfloat16* v_cache, const int32_t* lengths, __nv_bfloat16* out,
                                        int num_q_heads, KvCacheShape s, float scale) {
  extern __shared__ float scores[];  // [max_len]
  __shared__ float scratch[32];
  const int b = blockIdx.x / num_q_heads, h = blockIdx.x % num_q_heads;
  const int hd = static_cast<int>(s.head_dim), group = num_q_heads / static_cast<int>(s.num_heads);
  const int len = lengths[b];
  const __nv_bfloat16* qh = q + (static_cast<int64_t>(b) * num_q_heads + h) * hd;
  __nv_bfloat16* oh = out + (static_cast<int64_t>(b) * num_q_heads + h) * hd;
  if (len < 1 || len > s.max_len) {
    for (int i = threadIdx.x; i < hd; i += blockDim.x) oh[i] = nan_value<__nv_bfloat16>();
    return;
  }
  const int64_t base = (static_cast<int64_t>(b) * s.num_heads + h / group) * s.max_len * hd;
  float local_max = -INFINITY;
  for (int j = threadIdx.x; j < len; j += blockDim.x) {
    const __nv_bfloat16* kj = k_cache + base + static_cast<int64_t>(j) * hd;
    float dot = 0;
    for (int i = 0; i < hd; ++i) dot += __bfloat162float(qh[i]) * __bfloat162float(kj[i]);
    scores[j] = dot * scale;
    local_max = fmaxf(local_max, dot * scale);
  }
  // Block maximum: -(block sum of nothing) is not a max, so reduce through the warps by hand.
  local_max = warp_max(local_max);
  if (threadIdx.x % k_warp == 0) scratch[threadIdx.x / k_warp] = local_max;
  __syncthreads();
  float max = -INFINITY;
  for (int w = 0; w < (blockDim.x + k_warp - 1) / k_warp; ++w) max = fmaxf(max, scratch[w]);
  __syncthreads();
  float local_sum = 0;
  for (int j = threadIdx.x; j < len; j += blockDim.x) local_sum += scores[j] = __expf(scores[j] - max);
  const float total = block_sum(local_sum, scratch);  // its barriers also publish scores[]
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0;
    for (int j = 0; j < len; ++j) acc += scores[j] * __bfloat162float(v_cache[base + static_cast<int64_t>(j) * hd + i]);
    oh[i] = __float2bfloat16_rn(acc / total);
  }
}

}  // namespace

void kv_cache_write(const __nv_bfloat16* rows, const int32_t* positions, int64_t num_rows, __nv_bfloat16* cache,
                    const KvCacheShape& s, cudaStream_t stream) {
  MOE_CHECK(s.batch > 0 && num_rows % s.batch == 0 && s.num_heads > 0 && s.head_dim > 0 && s.max_len > 0,
            "kv_cache_write: ", num_rows, " rows do not fit a cache of batch ", s.batch, ", ", s.num_heads,
            " heads, max_len ", s.max_len, ", head_dim ", s.head_dim);
  if (num_rows == 0) return;
  constexpr int threads = 256;
  kv_cache_write_kernel<<<grid_for(num_rows * s.num_heads * s.head_dim, threads), threads, 0, stream>>>(
      rows, positions, num_rows, cache, s);
  CUDA_CHECK_LAUNCH();
}

void decode_attention(const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                      const int32_t* lengths, __nv_bfloat16* out, int64_t num_q_heads, const KvCacheShape& s,
                      cudaStream_t stream) {
  MOE_CHECK(s.batch > 0 && s.num_heads > 0 && num_q_heads % s.num_heads == 0 && s.head_dim > 0 && s.max_len > 0,
            "decode_attention: ", num_q_heads, " query heads do not group over ", s.num_heads, " kv heads");
  const size_t shared = static_cast<size_t>(s.max_len) * sizeof(float);
  MOE_CHECK(shared <= 48 * 1024, "decode_attention: a cache of ", s.max_len,
            " positions needs more than 48 KiB of shared memory for its scores");
  MOE_CHECK(s.batch * num_q_heads <= (int64_t{1} << 31) - 1, "decode_attention: too many (sequence, head) pairs");
  constexpr int threads = 128;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  decode_attention_kernel<<<static_cast<unsigned>(s.batch * num_q_heads), threads, shared, stream>>>(
      q, k_cache, v_cache, lengths, out, static_cast<int>(num_q_heads), s, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

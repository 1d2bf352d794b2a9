// Shared pieces of the fp32 (CUDA-core) attention kernels: tile sizes, the per-launch geometry,
// tile loads into fp32 shared memory, and the head-dim dispatch. Included only from attention*.cu.
#pragma once

#include <climits>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"

namespace moe::cuda::attn {

using bf16 = __nv_bfloat16;

constexpr int k_tile = 32;                        // query rows or keys per tile (one per lane)
constexpr int k_warps = 8;                        // warps per block
constexpr int k_rows_per_warp = k_tile / k_warps;  // tile rows owned by each warp
constexpr int k_threads = k_warps * k_warp;
constexpr int k_max_head_dim = 256;

// Geometry of one launch, passed by value to every kernel.
struct Geometry {
  int seq_len, num_heads, num_kv_heads, head_dim;
  int kv_len;  // keys/values per sequence (seq_len but for cross-attention)
  int group;  // query heads per kv head
  float scale;  // 1 / sqrt(head_dim)
  bool causal;  // key j visible to query i only when j <= i
  const int32_t* doc_starts;  // [B*S] document masking (causal only): query i sees keys doc_starts[i]..i; or null
  // Whether key j counts for query i (both inside their sequences); lo: doc_start(b, i).
  __device__ __forceinline__ bool visible(int i, int j, int lo) const {
    return i < seq_len && j < kv_len && (!causal || j <= i) && j >= lo;
  }
  // The first key query i of sequence b may see (0 without document masking or past the sequence).
  __device__ __forceinline__ int doc_start(int b, int i) const {
    return doc_starts != nullptr && i < seq_len ? doc_starts[static_cast<int64_t>(b) * seq_len + i] : 0;
  }
  __device__ __forceinline__ int64_t q_index(int b, int i, int h, int d) const {
    return (static_cast<int64_t>(b) * seq_len + i) * num_heads * head_dim + static_cast<int64_t>(h) * head_dim + d;
  }
  __device__ __forceinline__ int64_t kv_index(int b, int j, int hk, int d) const {
    return (static_cast<int64_t>(b) * kv_len + j) * num_kv_heads * head_dim + static_cast<int64_t>(hk) * head_dim +
           d;
  }
  __device__ __forceinline__ int64_t stat_index(int b, int h, int i) const {
    return (static_cast<int64_t>(b) * num_heads + h) * seq_len + i;
  }
};

// tile[r][0..hd) (row stride `stride` floats) = mult * rows first_row + r of a [B*seq, H*hd] bf16
// tensor at head `head` (seq: g.seq_len for q-shaped tensors, g.kv_len for k, v); rows at or
// beyond seq are zero. Whole block participates.
__device__ __forceinline__ void load_tile(float* tile, int stride, const bf16* src, int heads, int head,
                                          const Geometry& g, int seq, int b, int first_row, float mult) {
  const int hd = g.head_dim;
  for (int idx = threadIdx.x; idx < k_tile * hd; idx += blockDim.x) {
    const int r = idx / hd, d = idx - r * hd;
    const int row = first_row + r;
    float value = 0.0f;
    if (row < seq) {
      const int64_t at = (static_cast<int64_t>(b) * seq + row) * heads * hd + static_cast<int64_t>(head) * hd + d;
      value = __bfloat162float(src[at]) * mult;
    }
    tile[r * stride + d] = value;
  }
}

inline Geometry make_geometry(const kernels::AttentionShape& s, const int32_t* doc_starts) {
  MOE_CHECK(s.batch >= 0 && s.seq_len >= 0 && s.num_heads > 0 && s.num_kv_heads > 0 &&
                s.num_heads % s.num_kv_heads == 0,
            "attention: bad heads (", s.num_heads, " query, ", s.num_kv_heads, " kv)");
  MOE_CHECK(s.head_dim > 0 && s.head_dim <= k_max_head_dim, "attention: head_dim ", s.head_dim,
            " not supported (1..", k_max_head_dim, ")");
  MOE_CHECK(s.seq_len <= INT_MAX / 2 && s.kv_len() <= INT_MAX / 2 && s.batch <= 65535 && s.num_heads <= 65535,
            "attention: sizes out of range");
  MOE_CHECK(s.kv_len() == s.seq_len || (!s.causal && doc_starts == nullptr), "attention: kv_seq_len ", s.kv_seq_len,
            " != seq_len ", s.seq_len, " (cross-attention) needs causal = false and no document masking");
  Geometry g;
  g.seq_len = static_cast<int>(s.seq_len);
  g.kv_len = static_cast<int>(s.kv_len());
  g.num_heads = static_cast<int>(s.num_heads);
  g.num_kv_heads = static_cast<int>(s.num_kv_heads);
  g.head_dim = static_cast<int>(s.head_dim);
  g.group = g.num_heads / g.num_kv_heads;
  g.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  g.causal = s.causal;
  MOE_CHECK(doc_starts == nullptr || s.causal, "attention: document masking needs the causal mask");
  g.doc_starts = doc_starts;
  return g;
}

// Values of the head dim per lane (compile-time register array length): 1, 2, 4 or 8.
inline int per_lane_for(int head_dim) {
  if (head_dim <= 32) return 1;
  if (head_dim <= 64) return 2;
  if (head_dim <= 128) return 4;
  return 8;
}

// Raise a kernel's dynamic shared-memory limit when it needs more than the default 48 KB.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

}  // namespace moe::cuda::attn

// Rotary embedding: one thread per (row, pair index), the angle computed once in double,
// reduced to [-pi, pi] and rotated in fp32 for every head of the row. The heads go k_head_chunk at
// a time, every load of a chunk issued before its stores: a thread's loads would otherwise each
// wait for the store before them (they may alias), a global-memory latency per head.
#include "kernels/cuda/rope.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int k_head_chunk = 4;

// x[rows, H*hd]: for each head h, (x[h*hd + i], x[h*hd + i + hd/2]) rotated by pos * theta^(-2i/hd)
__global__ void rope_kernel(__nv_bfloat16* x, int64_t rows, int num_heads, int head_dim, int64_t seq_len,
                            double theta, float sign, const int32_t* doc_starts, const int32_t* positions,
                            kernels::RopeScaling scaling) {
  const int half = head_dim / 2;
  const int64_t total = rows * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / half;
    const int i = static_cast<int>(g - t * half);
    const double inv_freq = kernels::rope_inv_freq(i, head_dim, theta, scaling);
    const int64_t pos = positions ? positions[t] : t % seq_len - (doc_starts ? doc_starts[t] : 0);
    double angle = static_cast<double>(pos) * inv_freq;
    angle -= 2.0 * M_PI * rint(angle / (2.0 * M_PI));  // exact-enough reduction before fp32 trig
    float s, c;
    sincosf(static_cast<float>(angle), &s, &c);
    s *= sign;
    __nv_bfloat16* row = x + t * static_cast<int64_t>(num_heads) * head_dim;
    for (int h0 = 0; h0 < num_heads; h0 += k_head_chunk) {
      float x1[k_head_chunk], x2[k_head_chunk];
#pragma unroll
      for (int j = 0; j < k_head_chunk; ++j) {
        if (h0 + j >= num_heads) break;
        const __nv_bfloat16* head = row + (h0 + j) * head_dim;
        x1[j] = __bfloat162float(head[i]);
        x2[j] = __bfloat162float(head[i + half]);
      }
#pragma unroll
      for (int j = 0; j < k_head_chunk; ++j) {
        if (h0 + j >= num_heads) break;
        __nv_bfloat16* head = row + (h0 + j) * head_dim;
        head[i] = __float2bfloat16_rn(x1[j] * c - x2[j] * s);
        head[i + half] = __float2bfloat16_rn(x1[j] * s + x2[j] * c);
      }
    }
  }
}

}  // namespace

void rope(__nv_bfloat16* x, const RopeShape& s, float theta, bool inverse, const int32_t* doc_starts,
          const kernels::RopeScaling& scaling, cudaStream_t stream) {
  MOE_CHECK(s.rows >= 0 && s.num_heads > 0 && s.head_dim > 0 && s.head_dim % 2 == 0 && s.seq_len > 0,
            "rope: bad shape (rows ", s.rows, ", heads ", s.num_heads, ", head_dim ", s.head_dim, ", seq_len ",
            s.seq_len, ")");
  MOE_CHECK(s.num_heads * s.head_dim <= (int64_t{1} << 30), "rope: row too wide");
  MOE_CHECK(theta > 0, "rope: theta must be positive, got ", theta);
  if (s.rows == 0) return;
  constexpr int threads = 256;
  rope_kernel<<<grid_for(s.rows * (s.head_dim / 2), threads), threads, 0, stream>>>(
      x, s.rows, static_cast<int>(s.num_heads), static_cast<int>(s.head_dim), s.seq_len,
      static_cast<double>(theta), inverse ? -1.0f : 1.0f, doc_starts, nullptr, scaling);
  CUDA_CHECK_LAUNCH();
}

void rope_at(__nv_bfloat16* x, int64_t rows, int64_t num_heads, int64_t head_dim, const int32_t* positions,
             float theta, const kernels::RopeScaling& scaling, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && num_heads > 0 && head_dim > 0 && head_dim % 2 == 0 && num_heads * head_dim <= (int64_t{1} << 30),
            "rope_at: bad shape (rows ", rows, ", heads ", num_heads, ", head_dim ", head_dim, ")");
  MOE_CHECK(theta > 0, "rope_at: theta must be positive, got ", theta);
  if (rows == 0) return;
  constexpr int threads = 256;
  rope_kernel<<<grid_for(rows * (head_dim / 2), threads), threads, 0, stream>>>(
      x, rows, static_cast<int>(num_heads), static_cast<int>(head_dim), 1, static_cast<double>(theta), 1.0f,
      nullptr, positions, scaling);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

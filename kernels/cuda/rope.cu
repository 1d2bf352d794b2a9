// Rotary embedding. Every (row, pair index) angle is computed once in double, reduced to
// [-pi, pi] and turned into fp32 cos/sin for all the row's heads. The main kernel gives a block a
// few rows: it tabulates their cos/sin in shared memory, then rotates 8 pairs per thread with
// 16-byte loads and stores (head_dim / 2 a multiple of 8, rows 16-byte aligned). Other shapes take
// the per-pair kernel, whose heads go k_head_chunk at a time, every load of a chunk issued before
// its stores (a thread's loads would otherwise each wait for the store before them).
#include "kernels/cuda/rope.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int k_threads = 256;
constexpr int k_head_chunk = 4;
constexpr int k_table_entries = 1024;  // (row, pair) cos/sin a block of the vector kernel tabulates
constexpr int k_max_table_rows = 16;

struct RopeArgs {
  __nv_bfloat16* x;  // [rows, num_heads * head_dim]
  int64_t rows, seq_len;
  int num_heads, head_dim;
  double theta;
  float sign;                  // -1: the inverse rotation
  const int32_t* doc_starts;   // i32[rows] or nullptr: position t % seq_len - doc_starts[t]
  const int32_t* positions;    // i32[rows] or nullptr: position positions[t] (cached decoding)
  kernels::RopeScaling scaling;
};

__device__ __forceinline__ int64_t position_of(const RopeArgs& a, int64_t t) {
  if (a.positions != nullptr) return a.positions[t];
  return t % a.seq_len - (a.doc_starts != nullptr ? a.doc_starts[t] : 0);
}

// (cos, sign * sin) of the angle pos * inv_freq (a pair's inverse frequency, rope_inv_freq).
__device__ __forceinline__ float2 cos_sin(const RopeArgs& a, int64_t pos, double inv_freq) {
  double angle = static_cast<double>(pos) * inv_freq;
  angle -= 2.0 * M_PI * rint(angle / (2.0 * M_PI));  // exact-enough reduction before fp32 trig
  float s, c;
  sincosf(static_cast<float>(angle), &s, &c);
  return make_float2(c, s * a.sign);
}

__device__ __forceinline__ double inv_freq_of(const RopeArgs& a, int i) {
  return kernels::rope_inv_freq(i, a.head_dim, a.theta, a.scaling);
}

// Rows of this block: a table of their (cos, sin) [rows][head_dim / 2] in shared memory (the
// pairs' inverse frequencies, a double power each, computed once first), then items (row, head,
// chunk of 8 pairs): x1 = x[h hd + 8c ...], x2 = x[h hd + hd/2 + 8c ...] become x1 cos - x2 sin
// and x1 sin + x2 cos.
__global__ void __launch_bounds__(k_threads) rope_vector_kernel(RopeArgs a, int table_rows) {
  extern __shared__ float2 table[];  // [table_rows][half], then double inv_freq[half]
  const int half = a.head_dim / 2, chunks = half / 8;
  double* inv_freq = reinterpret_cast<double*>(table + table_rows * half);
  for (int i = static_cast<int>(threadIdx.x); i < half; i += k_threads) inv_freq[i] = inv_freq_of(a, i);
  __syncthreads();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * table_rows;
  const int rows = static_cast<int>(min(static_cast<int64_t>(table_rows), a.rows - row0));
  for (int e = static_cast<int>(threadIdx.x); e < rows * half; e += k_threads) {
    table[e] = cos_sin(a, position_of(a, row0 + e / half), inv_freq[e % half]);
  }
  __syncthreads();
  const int per_row = a.num_heads * chunks;
  const int64_t row_width = static_cast<int64_t>(a.num_heads) * a.head_dim;
  for (int item = static_cast<int>(threadIdx.x); item < rows * per_row; item += k_threads) {
    const int r = item / per_row, h = (item % per_row) / chunks, c = item % chunks;
    __nv_bfloat16* x1p = a.x + (row0 + r) * row_width + h * a.head_dim + c * 8;
    __nv_bfloat16* x2p = x1p + half;
    float x1[8], x2[8], y1[8], y2[8];
    load8(x1p, x1);
    load8(x2p, x2);
    const float2* cs = table + r * half + c * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 t = cs[j];
      y1[j] = x1[j] * t.x - x2[j] * t.y;
      y2[j] = x1[j] * t.y + x2[j] * t.x;
    }
    store8(x1p, y1);
    store8(x2p, y2);
  }
}

// One thread per (row, pair index), every head of the row: any even head_dim, any alignment.
__global__ void rope_pair_kernel(RopeArgs a) {
  const int half = a.head_dim / 2;
  const int64_t total = a.rows * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / half;
    const int i = static_cast<int>(g - t * half);
    const float2 cs = cos_sin(a, position_of(a, t), inv_freq_of(a, i));
    __nv_bfloat16* row = a.x + t * static_cast<int64_t>(a.num_heads) * a.head_dim;
    for (int h0 = 0; h0 < a.num_heads; h0 += k_head_chunk) {
      float x1[k_head_chunk], x2[k_head_chunk];
#pragma unroll
      for (int j = 0; j < k_head_chunk; ++j) {
        if (h0 + j >= a.num_heads) break;
        const __nv_bfloat16* head = row + (h0 + j) * a.head_dim;
        x1[j] = __bfloat162float(head[i]);
        x2[j] = __bfloat162float(head[i + half]);
      }
#pragma unroll
      for (int j = 0; j < k_head_chunk; ++j) {
        if (h0 + j >= a.num_heads) break;
        __nv_bfloat16* head = row + (h0 + j) * a.head_dim;
        head[i] = __float2bfloat16_rn(x1[j] * cs.x - x2[j] * cs.y);
        head[i + half] = __float2bfloat16_rn(x1[j] * cs.y + x2[j] * cs.x);
      }
    }
  }
}

void launch_rope(const RopeArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  const int half = a.head_dim / 2;
  if (half % 8 == 0 && aligned_to(a.x, 16) && half <= k_table_entries) {
    const int table_rows = std::clamp(k_table_entries / half, 1, k_max_table_rows);
    const int64_t blocks = ceil_div(a.rows, table_rows);
    const size_t smem = static_cast<size_t>(table_rows) * half * sizeof(float2) + half * sizeof(double);
    rope_vector_kernel<<<static_cast<unsigned>(blocks), k_threads, smem, stream>>>(a, table_rows);
  } else {
    rope_pair_kernel<<<grid_for(a.rows * half, k_threads), k_threads, 0, stream>>>(a);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope(__nv_bfloat16* x, const RopeShape& s, float theta, bool inverse, const int32_t* doc_starts,
          const kernels::RopeScaling& scaling, cudaStream_t stream) {
  MOE_CHECK(s.rows >= 0 && s.num_heads > 0 && s.head_dim > 0 && s.head_dim % 2 == 0 && s.seq_len > 0,
            "rope: bad shape (rows ", s.rows, ", heads ", s.num_heads, ", head_dim ", s.head_dim, ", seq_len ",
            s.seq_len, ")");
  MOE_CHECK(s.num_heads * s.head_dim <= (int64_t{1} << 30), "rope: row too wide");
  MOE_CHECK(theta > 0, "rope: theta must be positive, got ", theta);
  launch_rope({x, s.rows, s.seq_len, static_cast<int>(s.num_heads), static_cast<int>(s.head_dim),
               static_cast<double>(theta), inverse ? -1.0f : 1.0f, doc_starts, nullptr, scaling},
              stream);
}

void rope_at(__nv_bfloat16* x, int64_t rows, int64_t num_heads, int64_t head_dim, const int32_t* positions,
             float theta, const kernels::RopeScaling& scaling, cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && num_heads > 0 && head_dim > 0 && head_dim % 2 == 0 && num_heads * head_dim <= (int64_t{1} << 30),
            "rope_at: bad shape (rows ", rows, ", heads ", num_heads, ", head_dim ", head_dim, ")");
  MOE_CHECK(theta > 0, "rope_at: theta must be positive, got ", theta);
  launch_rope({x, rows, 1, static_cast<int>(num_heads), static_cast<int>(head_dim), static_cast<double>(theta), 1.0f,
               nullptr, positions, scaling},
              stream);
}

}  // namespace moe::cuda

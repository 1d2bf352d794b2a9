// Launchers of the tensor-core flash-attention backward (the block body is in
// flash_attention_backward.cuh), with its preprocessing (delta, zeroed dQ accumulator) and the
// final dQ cast.
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_backward.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace moe::cuda {

namespace flash {

namespace {

constexpr int k_threads = 256;

// delta[b, h, i] = sum_d dout * out for every (token, head) row r = (b S + i) Hq + h (row r of
// the q layout starts at r hd), and that row of dq_accum zeroed. kHeadDim / 8 lanes per row
// (a power of two dividing 32), 8 values each.
template <int kHeadDim>
__global__ void __launch_bounds__(k_threads)
    preprocess_kernel(const __nv_bfloat16* out, const __nv_bfloat16* dout, float* delta, float* dq_accum, int64_t rows,
                      int num_heads, int seq_len) {
  constexpr int k_lanes = kHeadDim / 8;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = thread / k_lanes;
  const int part = static_cast<int>(thread % k_lanes);
  const bool valid = row < rows;
  float sum = 0.0f;
  if (valid) {
    const int64_t at = row * kHeadDim + part * 8;
    float o[8], g[8];
    load8(out + at, o);
    load8(dout + at, g);
#pragma unroll
    for (int c = 0; c < 8; ++c) sum += o[c] * g[c];
    const float zeros[8] = {};
    store8(dq_accum + at, zeros);
  }
#pragma unroll
  for (int o = k_lanes / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(k_full_mask, sum, o);  // within the row's lanes
  if (valid && part == 0) {
    const int64_t token = row / num_heads, b = token / seq_len, i = token % seq_len;
    const int64_t h = row % num_heads;
    delta[(b * num_heads + h) * seq_len + i] = sum;
  }
}

// grid (Hkv, B, key blocks), longest_first_grid: the first key blocks see the most query blocks
// under the causal mask, and every slice's first block starts before any slice's second.
template <class T>
__global__ void __launch_bounds__(T::kThreads) backward_kernel(const Params p) {
  extern __shared__ __align__(128) char smem[];
  backward_grid_block<T>(p, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z),
                         static_cast<int>(threadIdx.x), smem);
}

// dq = bf16(scale * dq_accum), 8 values per thread and step (n is a multiple of 8).
__global__ void __launch_bounds__(k_threads) convert_dq_kernel(const float* accum, __nv_bfloat16* dq, int64_t n,
                                                                float scale) {
  for (int64_t at = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8; at < n;
       at += static_cast<int64_t>(gridDim.x) * blockDim.x * 8) {
    float x[8];
    load8(accum + at, x);
#pragma unroll
    for (int c = 0; c < 8; ++c) x[c] *= scale;
    store8(dq + at, x);
  }
}

template <class T>
void launch_backward(const Params& p, const __nv_bfloat16* out, float* delta, __nv_bfloat16* dq, cudaStream_t stream) {
  constexpr int D = T::kHeadDim;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.seq_len * p.num_heads;
  preprocess_kernel<D><<<static_cast<unsigned>(ceil_div(rows * (D / 8), k_threads)), k_threads, 0, stream>>>(
      out, reinterpret_cast<const __nv_bfloat16*>(p.dout), delta, p.dq_accum, rows, p.num_heads, p.seq_len);
  CUDA_CHECK_LAUNCH();
  set_shared_bytes(backward_kernel<T>, T::kSmemBytes);
  const dim3 grid = longest_first_grid(backward_key_blocks<T>(p), p.num_kv_heads, p.batch);
  backward_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH();
  const int64_t n = rows * D;
  convert_dq_kernel<<<grid_for(n / 8, k_threads), k_threads, 0, stream>>>(p.dq_accum, dq, n, p.scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

}  // namespace flash

size_t flash_attention_dq_accum_numel(const kernels::AttentionShape& dims) {
  return static_cast<size_t>(dims.batch * dims.seq_len * dims.num_heads * dims.head_dim);
}

void flash_attention_backward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                              const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* dout,
                              __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, float* delta, float* dq_accum,
                              const kernels::AttentionShape& dims, const int32_t* doc_starts, cudaStream_t stream) {
  flash::Params p = flash::params_of(dims, q, k, v);
  p.doc_starts = doc_starts;
  p.dout = flash::bits(dout);
  p.lse_in = lse;
  p.delta = delta;
  p.dq_accum = dq_accum;
  p.dk = flash::bits(dk);
  p.dv = flash::bits(dv);
  switch (dims.head_dim) {
    case 64: return flash::launch_backward<flash::BackwardHd64>(p, out, delta, dq, stream);
    case 128: return flash::launch_backward<flash::BackwardHd128>(p, out, delta, dq, stream);
    default: MOE_FAIL("flash attention: head_dim ", dims.head_dim, " has no kernel (64 or 128)");
  }
}

}  // namespace moe::cuda

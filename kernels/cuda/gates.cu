// Router gate kernels: grid-stride elementwise noisy logits, the row gate forward over 8-wide
// chunks (16-byte accesses when rows allow), and its backward with a warp per row.
#include "kernels/cuda/gates.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

using bf16 = __nv_bfloat16;

// Stable forms: no exp of a large positive argument.
__device__ __forceinline__ float softplusf(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float stable_sigmoidf(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

// clean, raw, normal [n] -> h[n]
__global__ void noisy_forward_kernel(const float* clean, const float* raw, const float* normal, float* h, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    h[i] = clean[i] + normal[i] * softplusf(raw[i]);
  }
}

// raw, normal, dh [n] -> dclean[n], draw[n]
__global__ void noisy_backward_kernel(const float* raw, const float* normal, const float* dh, float* dclean,
                                      float* draw, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float d = dh[i];
    dclean[i] = d;
    draw[i] = d * normal[i] * stable_sigmoidf(raw[i]);
  }
}

// x[T,d], gate[T] -> y[T,d]; thread per N consecutive elements of a row (d % N == 0)
template <int N>
__global__ void row_gate_forward_kernel(const bf16* x, const bf16* gate, bf16* y, int64_t tokens, int64_t dim) {
  const int64_t per_row = dim / N, total = tokens * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    const float s = stable_sigmoidf(to_float(gate[t]));
    float v[N];
    load_n<N>(x + t * dim + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] *= s;
    store_n<N>(y + t * dim + c, v);
  }
}

// Warp per row t: dx[t,:] = s * dy[t,:], dgate[t] = s * (1 - s) * <dy[t,:], x[t,:]>
template <int N>
__global__ void row_gate_backward_kernel(const bf16* x, const bf16* gate, const bf16* dy, bf16* dx, bf16* dgate,
                                         int64_t tokens, int64_t dim) {
  const int lane = threadIdx.x % k_warp;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (t >= tokens) return;
  const float z = to_float(gate[t]), s = stable_sigmoidf(z);
  float dot = 0;
  for (int64_t c = static_cast<int64_t>(lane) * N; c < dim; c += k_warp * N) {
    float d[N], v[N];
    load_n<N>(dy + t * dim + c, d);
    load_n<N>(x + t * dim + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      dot += d[i] * v[i];
      d[i] *= s;
    }
    store_n<N>(dx + t * dim + c, d);
  }
  dot = warp_sum(dot);
  if (lane == 0) dgate[t] = from_float<bf16>(dot * s * stable_sigmoidf(-z));
}

}  // namespace

void noisy_logits_forward(const float* clean, const float* raw_noise, const float* normal, float* h, int64_t n,
                          cudaStream_t stream) {
  MOE_CHECK(n >= 0, "noisy_logits_forward: bad size ", n);
  if (n == 0) return;
  constexpr int threads = 256;
  noisy_forward_kernel<<<grid_for(n, threads, 8192), threads, 0, stream>>>(clean, raw_noise, normal, h, n);
  CUDA_CHECK_LAUNCH();
}

void noisy_logits_backward(const float* raw_noise, const float* normal, const float* dh, float* dclean,
                           float* draw_noise, int64_t n, cudaStream_t stream) {
  MOE_CHECK(n >= 0, "noisy_logits_backward: bad size ", n);
  if (n == 0) return;
  constexpr int threads = 256;
  noisy_backward_kernel<<<grid_for(n, threads, 8192), threads, 0, stream>>>(raw_noise, normal, dh, dclean,
                                                                            draw_noise, n);
  CUDA_CHECK_LAUNCH();
}

void row_gate_forward(const bf16* x, const bf16* gate, bf16* y, int64_t tokens, int64_t dim, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && dim >= 0, "row_gate_forward: bad shape (tokens ", tokens, ", dim ", dim, ")");
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  if (dim % 8 == 0 && aligned_to(x, 16) && aligned_to(y, 16)) {
    row_gate_forward_kernel<8><<<grid_for(tokens * dim / 8, threads), threads, 0, stream>>>(x, gate, y, tokens, dim);
  } else {
    row_gate_forward_kernel<1><<<grid_for(tokens * dim, threads), threads, 0, stream>>>(x, gate, y, tokens, dim);
  }
  CUDA_CHECK_LAUNCH();
}

void row_gate_backward(const bf16* x, const bf16* gate, const bf16* dy, bf16* dx, bf16* dgate, int64_t tokens,
                       int64_t dim, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && dim >= 0, "row_gate_backward: bad shape (tokens ", tokens, ", dim ", dim, ")");
  if (tokens == 0) return;
  constexpr int warps = 8;
  const unsigned blocks = static_cast<unsigned>(ceil_div(tokens, warps));
  if (dim % 8 == 0 && aligned_to(x, 16) && aligned_to(dy, 16) && aligned_to(dx, 16)) {
    row_gate_backward_kernel<8><<<blocks, warps * k_warp, 0, stream>>>(x, gate, dy, dx, dgate, tokens, dim);
  } else {
    row_gate_backward_kernel<1><<<blocks, warps * k_warp, 0, stream>>>(x, gate, dy, dx, dgate, tokens, dim);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

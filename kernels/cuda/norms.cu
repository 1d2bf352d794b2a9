// Norm kernels: one warp per row, rows re-read from L1/L2 between passes (no shared-memory
// row cache), parameter gradients through the deterministic column reduction.
#include "kernels/cuda/norms.h"

#include <climits>
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce.h"

namespace moe::cuda {

using kernels::FloatType;

namespace {

using bf16 = __nv_bfloat16;
constexpr int k_warps = 8;  // rows per block

// Lane's columns: c = lane*N, lane*N + 32*N, ... (N = 8 when every row is 16-byte aligned).
#define MOE_ROW_LOOP(c) for (int c = lane * N; c < dim; c += k_warp * N)

// The first pass over a row: the norm's input in floats. With the fused residual add (Add) that
// is h = x + delta, rounded to bf16 exactly as it is stored to h (later passes re-read h).
template <int N, bool Add>
__device__ __forceinline__ void load_input(const bf16* x, const bf16* delta, bf16* h, int64_t off, float* v) {
  load_n<N>(x + off, v);
  if constexpr (Add) {
    float d[N];
    load_n<N>(delta + off, d);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = __bfloat162float(__float2bfloat16_rn(v[i] + d[i]));
    store_n<N>(h + off, v);
  }
}

// The last pass of a backward: dx = g (+ dresidual, added in fp32 before the one rounding).
template <int N, bool Residual>
__device__ __forceinline__ void store_dx(const bf16* dresidual, bf16* dx, int64_t off, float* g) {
  if constexpr (Residual) {
    float r[N];
    load_n<N>(dresidual + off, r);
#pragma unroll
    for (int i = 0; i < N; ++i) g[i] += r[i];
  }
  store_n<N>(dx + off, g);
}

// x[rows,dim] (+ delta -> h), w[dim] -> y[rows,dim], rstd[rows]
template <int N, bool Add>
__global__ void rmsnorm_forward_kernel(const bf16* x, const bf16* delta, bf16* h, const bf16* w, bf16* y,
                                       float* rstd, int64_t rows, int dim, float eps) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps + threadIdx.x / k_warp;
  if (row >= rows) return;
  float ss = 0;
  MOE_ROW_LOOP(c) {
    float v[N];
    load_input<N, Add>(x, delta, h, row * dim + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) ss += v[i] * v[i];
  }
  const float rs = rsqrtf(warp_sum(ss) / dim + eps);
  if (lane == 0) rstd[row] = rs;
  const bf16* xr = (Add ? h : x) + row * dim;
  MOE_ROW_LOOP(c) {
    float v[N], wv[N];
    load_n<N>(xr + c, v);
    load_n<N>(w + c, wv);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = v[i] * rs * wv[i];
    store_n<N>(y + row * dim + c, v);
  }
}

// dx = rstd * (g - xhat * mean(g * xhat)) (+ dresidual), g = dy * w, xhat = x * rstd
template <int N, bool Residual>
__global__ void rmsnorm_backward_kernel(const bf16* x, const bf16* w, const float* rstd, const bf16* dy,
                                        const bf16* dresidual, bf16* dx, int64_t rows, int dim) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps + threadIdx.x / k_warp;
  if (row >= rows) return;
  const bf16* xr = x + row * dim;
  const bf16* dyr = dy + row * dim;
  const float rs = rstd[row];
  float dot = 0;
  MOE_ROW_LOOP(c) {
    float xv[N], gv[N], wv[N];
    load_n<N>(xr + c, xv);
    load_n<N>(dyr + c, gv);
    load_n<N>(w + c, wv);
#pragma unroll
    for (int i = 0; i < N; ++i) dot += gv[i] * wv[i] * xv[i] * rs;
  }
  const float mean_dot = warp_sum(dot) / dim;
  MOE_ROW_LOOP(c) {
    float xv[N], gv[N], wv[N];
    load_n<N>(xr + c, xv);
    load_n<N>(dyr + c, gv);
    load_n<N>(w + c, wv);
#pragma unroll
    for (int i = 0; i < N; ++i) xv[i] = rs * (gv[i] * wv[i] - xv[i] * rs * mean_dot);
    store_dx<N, Residual>(dresidual, dx, row * dim + c, xv);
  }
}

// x[rows,dim] (+ delta -> h), w, b -> y, mean[rows], rstd[rows]; two-pass variance
template <int N, bool Add>
__global__ void layernorm_forward_kernel(const bf16* x, const bf16* delta, bf16* h, const bf16* w, const bf16* b,
                                         bf16* y, float* mean, float* rstd, int64_t rows, int dim, float eps) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps + threadIdx.x / k_warp;
  if (row >= rows) return;
  float s = 0;
  MOE_ROW_LOOP(c) {
    float v[N];
    load_input<N, Add>(x, delta, h, row * dim + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) s += v[i];
  }
  const float mu = warp_sum(s) / dim;
  const bf16* xr = (Add ? h : x) + row * dim;
  float var = 0;
  MOE_ROW_LOOP(c) {
    float v[N];
    load_n<N>(xr + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) var += (v[i] - mu) * (v[i] - mu);
  }
  const float rs = rsqrtf(warp_sum(var) / dim + eps);
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
  MOE_ROW_LOOP(c) {
    float v[N], wv[N], bv[N];
    load_n<N>(xr + c, v);
    load_n<N>(w + c, wv);
    load_n<N>(b + c, bv);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = (v[i] - mu) * rs * wv[i] + bv[i];
    store_n<N>(y + row * dim + c, v);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dresidual), g = dy * w, xhat = (x - mean) * rstd
template <int N, bool Residual>
__global__ void layernorm_backward_kernel(const bf16* x, const bf16* w, const float* mean, const float* rstd,
                                          const bf16* dy, const bf16* dresidual, bf16* dx, int64_t rows, int dim) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps + threadIdx.x / k_warp;
  if (row >= rows) return;
  const bf16* xr = x + row * dim;
  const bf16* dyr = dy + row * dim;
  const float mu = mean[row], rs = rstd[row];
  float sum_g = 0, sum_gx = 0;
  MOE_ROW_LOOP(c) {
    float xv[N], gv[N], wv[N];
    load_n<N>(xr + c, xv);
    load_n<N>(dyr + c, gv);
    load_n<N>(w + c, wv);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float g = gv[i] * wv[i];
      sum_g += g;
      sum_gx += g * (xv[i] - mu) * rs;
    }
  }
  const float mean_g = warp_sum(sum_g) / dim, mean_gx = warp_sum(sum_gx) / dim;
  MOE_ROW_LOOP(c) {
    float xv[N], gv[N], wv[N];
    load_n<N>(xr + c, xv);
    load_n<N>(dyr + c, gv);
    load_n<N>(w + c, wv);
#pragma unroll
    for (int i = 0; i < N; ++i) xv[i] = rs * (gv[i] * wv[i] - mean_g - (xv[i] - mu) * rs * mean_gx);
    store_dx<N, Residual>(dresidual, dx, row * dim + c, xv);
  }
}

#undef MOE_ROW_LOOP

// The 8-wide path needs every row start 16-byte aligned: aligned bases and dim % 8 == 0.
bool vec_ok(int64_t dim, std::initializer_list<const void*> ptrs) {
  if (dim % 8 != 0) return false;
  for (const void* p : ptrs) {
    if (p && !aligned_to(p, 16)) return false;
  }
  return true;
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>(ceil_div(rows, k_warps)); }

void check_sizes(int64_t rows, int64_t dim, const char* what) {
  MOE_CHECK(rows >= 0 && dim > 0 && dim <= INT_MAX && ceil_div(rows, k_warps) <= INT_MAX, what, ": bad shape [",
            rows, ",", dim, "]");
}

}  // namespace

// One launch of `kernel<N, Flag>` over row blocks: N = 8 when every pointer allows 16-byte
// access, Flag = the fused residual (add in forward, dresidual in backward) when its pointer is set.
#define MOE_LAUNCH_NORM(kernel, vec, flag, ...)                                                  \
  do {                                                                                          \
    const dim3 grid(row_blocks(rows)), block(k_warps * k_warp);                                 \
    if ((vec) && (flag)) kernel<8, true><<<grid, block, 0, stream>>>(__VA_ARGS__);                  \
    if ((vec) && !(flag)) kernel<8, false><<<grid, block, 0, stream>>>(__VA_ARGS__);                \
    if (!(vec) && (flag)) kernel<1, true><<<grid, block, 0, stream>>>(__VA_ARGS__);                 \
    if (!(vec) && !(flag)) kernel<1, false><<<grid, block, 0, stream>>>(__VA_ARGS__);               \
    CUDA_CHECK_LAUNCH();                                                                        \
  } while (0)

void rmsnorm_forward(const bf16* x, const bf16* delta, bf16* h, const bf16* w, bf16* y, float* rstd, int64_t rows,
                     int64_t dim, float eps, cudaStream_t stream) {
  check_sizes(rows, dim, "rmsnorm_forward");
  MOE_CHECK((delta == nullptr) == (h == nullptr), "rmsnorm_forward: delta and h go together");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, delta, h, w, y});
  MOE_LAUNCH_NORM(rmsnorm_forward_kernel, vec, delta != nullptr, x, delta, h, w, y, rstd, rows, d, eps);
}

void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* dresidual, bf16* dx,
                      float* dw, int64_t rows, int64_t dim, cudaStream_t stream) {
  check_sizes(rows, dim, "rmsnorm_backward");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, w, dy, dresidual, dx});
  MOE_LAUNCH_NORM(rmsnorm_backward_kernel, vec, dresidual != nullptr, x, w, rstd, dy, dresidual, dx, rows, d);
  ColumnReduce p;
  p.a = dy;
  p.b = x;
  p.in_type = FloatType::bf16;
  p.scale = rstd;
  p.rows = rows;
  p.cols = dim;
  p.out = dw;
  p.out_type = FloatType::f32;
  p.accumulate = true;
  column_reduce(p, stream);
}

void layernorm_forward(const bf16* x, const bf16* delta, bf16* h, const bf16* w, const bf16* b, bf16* y, float* mean,
                       float* rstd, int64_t rows, int64_t dim, float eps, cudaStream_t stream) {
  check_sizes(rows, dim, "layernorm_forward");
  MOE_CHECK((delta == nullptr) == (h == nullptr), "layernorm_forward: delta and h go together");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, delta, h, w, b, y});
  MOE_LAUNCH_NORM(layernorm_forward_kernel, vec, delta != nullptr, x, delta, h, w, b, y, mean, rstd, rows, d, eps);
}

void layernorm_backward(const bf16* x, const bf16* w, const float* mean, const float* rstd, const bf16* dy,
                        const bf16* dresidual, bf16* dx, float* dw, float* db, int64_t rows, int64_t dim,
                        cudaStream_t stream) {
  check_sizes(rows, dim, "layernorm_backward");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, w, dy, dresidual, dx});
  MOE_LAUNCH_NORM(layernorm_backward_kernel, vec, dresidual != nullptr, x, w, mean, rstd, dy, dresidual, dx, rows,
                  d);
  ColumnReduce p;
  p.a = dy;
  p.b = x;
  p.in_type = FloatType::bf16;
  p.scale = rstd;
  p.shift = mean;
  p.rows = rows;
  p.cols = dim;
  p.out = dw;
  p.out_type = FloatType::f32;
  p.accumulate = true;
  p.plain_out = db;
  column_reduce(p, stream);
}

#undef MOE_LAUNCH_NORM

}  // namespace moe::cuda

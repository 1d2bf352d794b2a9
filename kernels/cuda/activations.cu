// Activation kernels: one templated kernel per (activation, direction), N = 8 values per
// thread when rows are 16-byte aligned, else 1.
#include "kernels/cuda/activations.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

using kernels::Activation;

namespace {

using bf16 = __nv_bfloat16;

constexpr float k_gelu_c = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float k_gelu_a = 0.044715f;

// The elementwise function of the gate (or of x when not gated) and its derivative.
template <Activation kind>
__device__ __forceinline__ float act(float x) {
  if constexpr (kind == Activation::relu) {
    return x > 0.0f ? x : 0.0f;
  } else if constexpr (kind == Activation::swiglu) {
    return x / (1.0f + expf(-x));
  } else {  // gelu, geglu
    return 0.5f * x * (1.0f + tanhf(k_gelu_c * (x + k_gelu_a * x * x * x)));
  }
}
template <Activation kind>
__device__ __forceinline__ float act_grad(float x) {
  if constexpr (kind == Activation::relu) {
    return x > 0.0f ? 1.0f : 0.0f;
  } else if constexpr (kind == Activation::swiglu) {
    const float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
  } else {
    const float th = tanhf(k_gelu_c * (x + k_gelu_a * x * x * x));
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * k_gelu_c * (1.0f + 3.0f * k_gelu_a * x * x);
  }
}
// x[rows, in_width] -> y[rows, width]; in_width = 2*width when gated
template <Activation kind, int N>
__global__ void activation_forward_kernel(const bf16* x, bf16* y, int64_t rows, int64_t width) {
  const int64_t in_width = kernels::is_gated(kind) ? 2 * width : width;
  const int64_t per_row = width / N;
  const int64_t total = rows * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    float v[N];
    load_n<N>(x + t * in_width + c, v);
    if constexpr (kernels::is_gated(kind)) {
      float u[N];
      load_n<N>(x + t * in_width + width + c, u);
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = act<kind>(v[i]) * u[i];
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = act<kind>(v[i]);
    }
    store_n<N>(y + t * width + c, v);
  }
}

// dy[rows, width] -> dx[rows, in_width]
template <Activation kind, int N>
__global__ void activation_backward_kernel(const bf16* x, const bf16* dy, bf16* dx, int64_t rows, int64_t width) {
  const int64_t in_width = kernels::is_gated(kind) ? 2 * width : width;
  const int64_t per_row = width / N;
  const int64_t total = rows * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    float v[N], d[N];
    load_n<N>(x + t * in_width + c, v);
    load_n<N>(dy + t * width + c, d);
    if constexpr (kernels::is_gated(kind)) {
      float u[N], du[N];
      load_n<N>(x + t * in_width + width + c, u);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        du[i] = d[i] * act<kind>(v[i]);
        v[i] = d[i] * u[i] * act_grad<kind>(v[i]);
      }
      store_n<N>(dx + t * in_width + width + c, du);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = d[i] * act_grad<kind>(v[i]);
    }
    store_n<N>(dx + t * in_width + c, v);
  }
}

// A warp per row: a = act(gate) (* up), drow_weights[row] = <g, a>, a_weighted = w a, and dx the
// backward of w * act applied to g.
template <Activation kind, int N>
__global__ void activation_backward_weighted_kernel(const bf16* x, const bf16* g, const float* row_weights, bf16* dx,
                                                    bf16* a_weighted, float* drow_weights, int64_t rows,
                                                    int64_t width) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (row >= rows) return;
  constexpr bool gated = kernels::is_gated(kind);
  const int64_t in_width = gated ? 2 * width : width;
  const bf16* xr = x + row * in_width;
  const bf16* gr = g + row * width;
  bf16* dxr = dx + row * in_width;
  bf16* ar = a_weighted + row * width;
  const float w = row_weights != nullptr ? row_weights[row] : 1.0f;
  float dot = 0.0f;
  for (int64_t c = static_cast<int64_t>(lane) * N; c < width; c += k_warp * N) {
    float v[N], d[N], a[N];
    load_n<N>(xr + c, v);
    load_n<N>(gr + c, d);
    if constexpr (gated) {
      float u[N], du[N];
      load_n<N>(xr + width + c, u);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float f = act<kind>(v[i]);
        a[i] = f * u[i];
        dot += d[i] * a[i];
        du[i] = w * d[i] * f;
        v[i] = w * d[i] * u[i] * act_grad<kind>(v[i]);
        a[i] *= w;
      }
      store_n<N>(dxr + width + c, du);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        a[i] = act<kind>(v[i]);
        dot += d[i] * a[i];
        v[i] = w * d[i] * act_grad<kind>(v[i]);
        a[i] *= w;
      }
    }
    store_n<N>(dxr + c, v);
    store_n<N>(ar + c, a);
  }
  if (drow_weights == nullptr) return;  // warp-uniform
  dot = warp_sum(dot);
  if (lane == 0) drow_weights[row] = dot;
}

template <Activation kind>
void launch_weighted(const bf16* x, const bf16* g, const float* row_weights, bf16* dx, bf16* a_weighted,
                     float* drow_weights, int64_t rows, int64_t width, cudaStream_t stream) {
  constexpr int warps = 8;
  const bool vec = width % 8 == 0 && aligned_to(x, 16) && aligned_to(g, 16) && aligned_to(dx, 16) &&
                   aligned_to(a_weighted, 16);
  const auto blocks = static_cast<unsigned>(ceil_div(rows, warps));
  if (vec) {
    activation_backward_weighted_kernel<kind, 8><<<blocks, warps * k_warp, 0, stream>>>(
        x, g, row_weights, dx, a_weighted, drow_weights, rows, width);
  } else {
    activation_backward_weighted_kernel<kind, 1><<<blocks, warps * k_warp, 0, stream>>>(
        x, g, row_weights, dx, a_weighted, drow_weights, rows, width);
  }
  CUDA_CHECK_LAUNCH();
}

template <Activation kind>
void launch(bool backward, const bf16* x, const bf16* dy, bf16* out, int64_t rows, int64_t width,
            cudaStream_t stream) {
  constexpr int threads = 256;
  // With width % 8 == 0 the gate, the up half and every row start stay 16-byte aligned.
  const bool vec = width % 8 == 0 && aligned_to(x, 16) && aligned_to(out, 16) && (!dy || aligned_to(dy, 16));
  const unsigned blocks = grid_for(rows * (vec ? width / 8 : width), threads);
  if (backward && vec) activation_backward_kernel<kind, 8><<<blocks, threads, 0, stream>>>(x, dy, out, rows, width);
  if (backward && !vec) activation_backward_kernel<kind, 1><<<blocks, threads, 0, stream>>>(x, dy, out, rows, width);
  if (!backward && vec) activation_forward_kernel<kind, 8><<<blocks, threads, 0, stream>>>(x, out, rows, width);
  if (!backward && !vec) activation_forward_kernel<kind, 1><<<blocks, threads, 0, stream>>>(x, out, rows, width);
  CUDA_CHECK_LAUNCH();
}

void dispatch(Activation kind, bool backward, const bf16* x, const bf16* dy, bf16* out, int64_t rows, int64_t width,
              cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && width >= 0, "activation: negative size");
  if (rows == 0 || width == 0) return;
  switch (kind) {
    case Activation::relu: return launch<Activation::relu>(backward, x, dy, out, rows, width, stream);
    case Activation::gelu: return launch<Activation::gelu>(backward, x, dy, out, rows, width, stream);
    case Activation::geglu: return launch<Activation::geglu>(backward, x, dy, out, rows, width, stream);
    case Activation::swiglu: return launch<Activation::swiglu>(backward, x, dy, out, rows, width, stream);
  }
  MOE_FAIL("activation: unknown kind ", static_cast<int>(kind));
}

}  // namespace

void activation_backward_weighted(Activation kind, const bf16* x, const bf16* g, const float* row_weights, bf16* dx,
                                  bf16* a_weighted, float* drow_weights, int64_t rows, int64_t width,
                                  cudaStream_t stream) {
  MOE_CHECK(rows >= 0 && width >= 0, "weighted activation: negative size");
  if (rows == 0) return;
  switch (kind) {
    case Activation::relu:
      return launch_weighted<Activation::relu>(x, g, row_weights, dx, a_weighted, drow_weights, rows, width, stream);
    case Activation::gelu:
      return launch_weighted<Activation::gelu>(x, g, row_weights, dx, a_weighted, drow_weights, rows, width, stream);
    case Activation::geglu:
      return launch_weighted<Activation::geglu>(x, g, row_weights, dx, a_weighted, drow_weights, rows, width, stream);
    case Activation::swiglu:
      return launch_weighted<Activation::swiglu>(x, g, row_weights, dx, a_weighted, drow_weights, rows, width,
                                                 stream);
  }
  MOE_FAIL("weighted activation: unknown kind ", static_cast<int>(kind));
}

void activation_forward(Activation kind, const bf16* x, bf16* y, int64_t rows, int64_t width, cudaStream_t stream) {
  dispatch(kind, false, x, nullptr, y, rows, width, stream);
}

void activation_backward(Activation kind, const bf16* x, const bf16* dy, bf16* dx, int64_t rows, int64_t width,
                         cudaStream_t stream) {
  dispatch(kind, true, x, dy, dx, rows, width, stream);
}

}  // namespace moe::cuda

// Elementwise kernels: one templated kernel per (op, output type, input type), a 16-byte
// vector body over groups of 8 elements and a scalar tail.
#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

using kernels::FloatType;

namespace {

enum class EwOp { add, accumulate, scale, cast };

template <EwOp op>
__device__ __forceinline__ float apply(float out_old, float a, float b, float alpha) {
  if constexpr (op == EwOp::add) return a + b;
  if constexpr (op == EwOp::accumulate) return out_old + alpha * a;
  if constexpr (op == EwOp::scale) return alpha * out_old;
  return a;  // cast
}

// out[n] (TOut) = f(out[n], a[n], b[n]) with a, b of TIn. `vec` = all pointers 16-byte aligned.
// Elements [0, 8*(n/8)) go through 8-wide loads when vec, the rest one by one.
template <EwOp op, typename TOut, typename TIn>
__global__ void elementwise_kernel(TOut* out, const TIn* a, const TIn* b, float alpha, int64_t n, bool vec) {
  constexpr bool reads_out = op == EwOp::accumulate || op == EwOp::scale;
  constexpr bool reads_a = op != EwOp::scale;
  constexpr bool reads_b = op == EwOp::add;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if (vec) {
    const int64_t groups = n / 8;
    for (int64_t g = tid; g < groups; g += stride) {
      float o[8] = {}, va[8] = {}, vb[8] = {};
      if constexpr (reads_out) load8(out + g * 8, o);
      if constexpr (reads_a) load8(a + g * 8, va);
      if constexpr (reads_b) load8(b + g * 8, vb);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = apply<op>(o[i], va[i], vb[i], alpha);
      store8(out + g * 8, o);
    }
    scalar_begin = groups * 8;
  }
  for (int64_t i = scalar_begin + tid; i < n; i += stride) {
    float o = reads_out ? to_float(out[i]) : 0.0f;
    float va = reads_a ? to_float(a[i]) : 0.0f;
    float vb = reads_b ? to_float(b[i]) : 0.0f;
    out[i] = from_float<TOut>(apply<op>(o, va, vb, alpha));
  }
}

template <EwOp op, typename TOut, typename TIn>
void launch(void* out, const void* a, const void* b, float alpha, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const bool vec = aligned_to(out, 16) && (!a || aligned_to(a, 16)) && (!b || aligned_to(b, 16));
  constexpr int threads = 256;
  const unsigned blocks = grid_for(vec ? ceil_div(n, 8) : n, threads, 8192);
  elementwise_kernel<op, TOut, TIn><<<blocks, threads, 0, stream>>>(
      static_cast<TOut*>(out), static_cast<const TIn*>(a), static_cast<const TIn*>(b), alpha, n, vec);
  CUDA_CHECK_LAUNCH();
}

using bf16 = __nv_bfloat16;

}  // namespace

void add_tensors(const void* a, const void* b, void* out, FloatType type, int64_t n, cudaStream_t stream) {
  if (type == FloatType::f32) {
    launch<EwOp::add, float, float>(out, a, b, 1.0f, n, stream);
  } else {
    launch<EwOp::add, bf16, bf16>(out, a, b, 1.0f, n, stream);
  }
}

void accumulate(void* dst, FloatType dst_type, const void* src, FloatType src_type, int64_t n, float alpha,
                cudaStream_t stream) {
  if (dst_type == FloatType::f32 && src_type == FloatType::f32) {
    launch<EwOp::accumulate, float, float>(dst, src, nullptr, alpha, n, stream);
  } else if (dst_type == FloatType::f32 && src_type == FloatType::bf16) {
    launch<EwOp::accumulate, float, bf16>(dst, src, nullptr, alpha, n, stream);
  } else if (dst_type == FloatType::bf16 && src_type == FloatType::bf16) {
    launch<EwOp::accumulate, bf16, bf16>(dst, src, nullptr, alpha, n, stream);
  } else {
    MOE_FAIL("accumulate: unsupported ", float_type_name(dst_type), " += ", float_type_name(src_type));
  }
}

namespace {

template <typename T>
__global__ void add_bias_kernel(T* y, const T* b, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = from_float<T>(to_float(y[i]) + to_float(b[i % cols]));
  }
}

}  // namespace

void add_bias(void* y, const void* b, FloatType type, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int threads = 256;
  const unsigned blocks = grid_for(rows * cols, threads, 8192);
  if (type == FloatType::f32) {
    add_bias_kernel<float><<<blocks, threads, 0, stream>>>(static_cast<float*>(y), static_cast<const float*>(b), rows,
                                                            cols);
  } else {
    add_bias_kernel<bf16><<<blocks, threads, 0, stream>>>(static_cast<bf16*>(y), static_cast<const bf16*>(b), rows,
                                                           cols);
  }
  CUDA_CHECK_LAUNCH();
}

void scale_inplace(void* x, FloatType type, int64_t n, float alpha, cudaStream_t stream) {
  if (type == FloatType::f32) {
    launch<EwOp::scale, float, float>(x, nullptr, nullptr, alpha, n, stream);
  } else {
    launch<EwOp::scale, bf16, bf16>(x, nullptr, nullptr, alpha, n, stream);
  }
}

void cast_float(const void* src, FloatType src_type, void* dst, FloatType dst_type, int64_t n, cudaStream_t stream) {
  if (src_type == dst_type) {
    if (n > 0 && src != dst) {
      CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * (src_type == FloatType::f32 ? 4 : 2),
                                 cudaMemcpyDeviceToDevice, stream));
    }
  } else if (src_type == FloatType::f32) {
    launch<EwOp::cast, bf16, float>(dst, src, nullptr, 1.0f, n, stream);
  } else {
    launch<EwOp::cast, float, bf16>(dst, src, nullptr, 1.0f, n, stream);
  }
}

}  // namespace moe::cuda

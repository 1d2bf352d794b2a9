// Device-side helpers shared by the CUDA kernels: bf16/f32 load-store, warp and block
// reductions, launch arithmetic. Included only from .cu files (needs nvcc).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cmath>

#include "kernels/cuda/cuda_check.h"
#include "kernels/params.h"

namespace moe::cuda {

constexpr int k_warp = 32;
constexpr unsigned k_full_mask = 0xffffffffu;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n items: enough blocks to fill the GPU, never zero.
inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535) {
  int64_t blocks = ceil_div(n, threads);
  if (blocks < 1) blocks = 1;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned>(blocks);
}

// Whether a pointer is aligned for `bytes`-wide vector accesses.
inline bool aligned_to(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Calls fn(W{}) with the widest copy word W (16, 8, 4, 2 or 1 bytes) that divides row_bytes and
// to which src and dst are both aligned: every row of both then starts on a word.
template <typename Fn>
void with_row_word(int64_t row_bytes, const void* src, const void* dst, Fn&& fn) {
  auto fits = [&](size_t w) {
    return row_bytes % static_cast<int64_t>(w) == 0 && aligned_to(src, w) && aligned_to(dst, w);
  };
  if (fits(16)) {
    fn(uint4{});
  } else if (fits(8)) {
    fn(uint2{});
  } else if (fits(4)) {
    fn(uint32_t{});
  } else if (fits(2)) {
    fn(uint16_t{});
  } else {
    fn(uint8_t{});
  }
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// A quiet NaN in either storage type (poison for invalid indices).
template <typename T>
__device__ __forceinline__ T nan_value() { return from_float<T>(__int_as_float(0x7fc00000)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(k_full_mask, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(k_full_mask, v, o);
  return v;
}
__device__ __forceinline__ int32_t warp_sum(int32_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(k_full_mask, v, o);
  return v;
}
// Inclusive prefix sum over the lanes: lane i gets the sum of lanes 0..i.
__device__ __forceinline__ int32_t warp_inclusive_sum(int32_t v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t lower = __shfl_up_sync(k_full_mask, v, o);
    if (lane >= o) v += lower;
  }
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(k_full_mask, v, o));
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds >= 32 values and
// may be reused after the call returns (the trailing barrier protects it).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int num_warps = (blockDim.x + k_warp - 1) / k_warp;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < num_warps; ++w) total += scratch[w];  // same order everywhere: deterministic
  __syncthreads();
  return total;
}

// Online-softmax state (running max m, sum s of exp(x - m)) and its merge.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}
__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(k_full_mask, v.m, o), __shfl_xor_sync(k_full_mask, v.s, o)};
    v = merge(v, other);
  }
  return v;
}

// 8 bf16 values in one 16-byte access.
struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};
__device__ __forceinline__ void unpack8(const Bf16x8& p, float out[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(p.h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ Bf16x8 pack8(const float in[8]) {
  Bf16x8 p;
#pragma unroll
  for (int i = 0; i < 4; ++i) p.h[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  return p;
}

// 8 consecutive values (16-byte aligned) of either storage type, as floats.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float out[8]) {
  unpack8(*reinterpret_cast<const Bf16x8*>(p), out);
}
__device__ __forceinline__ void load8(const float* p, float out[8]) {
  float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float in[8]) {
  *reinterpret_cast<Bf16x8*>(p) = pack8(in);
}
__device__ __forceinline__ void store8(float* p, const float in[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
}

// N consecutive values (N = 8: 16-byte aligned; N = 1: scalar) as floats, and back.
template <int N, typename T>
__device__ __forceinline__ void load_n(const T* p, float* out) {
  if constexpr (N == 8) {
    load8(p, out);
  } else {
    static_assert(N == 1, "load_n takes 1 or 8 values");
    out[0] = to_float(p[0]);
  }
}
template <int N, typename T>
__device__ __forceinline__ void store_n(T* p, const float* in) {
  if constexpr (N == 8) {
    store8(p, in);
  } else {
    static_assert(N == 1, "store_n takes 1 or 8 values");
    p[0] = from_float<T>(in[0]);
  }
}

// Stream-ordered scratch memory from the device's default pool, freed on the same stream.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);  // no throw from a destructor; errors resurface later
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace moe::cuda

// Elementwise GPU ops on flat float buffers (bf16 or f32 storage, fp32 arithmetic): add,
// accumulate, scale, cast. Contiguous buffers of n elements; 16-byte vector path when aligned.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// out[n] = a[n] + b[n]; all three of `type`.
void add_tensors(const void* a, const void* b, void* out, kernels::FloatType type, int64_t n, cudaStream_t stream);
// dst[n] += alpha * src[n]; (dst, src) types: (f32, f32), (f32, bf16), (bf16, bf16).
void accumulate(void* dst, kernels::FloatType dst_type, const void* src, kernels::FloatType src_type, int64_t n,
                float alpha, cudaStream_t stream);
// y[rows, cols] += b[cols] (linear biases), in place; y and b of `type`, fp32 arithmetic.
void add_bias(void* y, const void* b, kernels::FloatType type, int64_t rows, int64_t cols, cudaStream_t stream);
// x[n] *= alpha
void scale_inplace(void* x, kernels::FloatType type, int64_t n, float alpha, cudaStream_t stream);
// dst[n] = src[n] converted (round to nearest even into bf16); same type is a copy.
void cast_float(const void* src, kernels::FloatType src_type, void* dst, kernels::FloatType dst_type, int64_t n,
                cudaStream_t stream);

}  // namespace moe::cuda

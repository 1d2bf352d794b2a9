// Row gather and scatter-add on the GPU, indexed by i32 row ids: the building blocks of the
// embedding lookup, its gradient, and token permutation.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// dst[i,:] = src[index[i],:] for i < num_index; rows of row_bytes bytes, any element type.
// Indices outside [0, src_rows) are not an error on the GPU (that would need a host sync):
// the row is filled with 0xff bytes (NaN for f32/bf16, -1 for integers) so it shows up; an index
// of -1 (no row) gives zeros. dst must not overlap src.
void gather_rows(const void* src, int64_t src_rows, const int32_t* index, int64_t num_index, int64_t row_bytes,
                 void* dst, cudaStream_t stream);

// dst[index[i],:] += src[i,:] for i < num_index (indices may repeat); rows of `cols` elements.
// (dst, src) types: (f32, f32), (bf16, bf16), (f32, bf16). Uses atomic adds: f32 atomics, and
// bf16x2 atomics into bf16 (each add rounds to bf16; order across repeats is unspecified, so
// results are not bitwise run-to-run deterministic). Indices outside [0, dst_rows) are skipped.
void scatter_add_rows(const void* src, kernels::FloatType src_type, const int32_t* index, int64_t num_index,
                      int64_t cols, void* dst, kernels::FloatType dst_type, int64_t dst_rows, cudaStream_t stream);

// The same for i32 rows (integer atomics: exact and order-independent).
void scatter_add_rows_i32(const int32_t* src, const int32_t* index, int64_t num_index, int64_t cols, int32_t* dst,
                          int64_t dst_rows, cudaStream_t stream);

}  // namespace moe::cuda

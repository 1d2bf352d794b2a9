// CPU reference row gather and scatter-add by an index vector (token permutations, dispatch).
// Raw pointers only; indices outside the source/destination rows are an error.
#pragma once

#include <cstdint>

namespace moe::cpu {

// src[R,C], index i32[N] -> dst[N,C] with dst[i] = src[index[i]]
template <typename T>
void gather_rows(const T* src, const int32_t* index, T* dst, int64_t num_index, int64_t src_rows, int64_t cols);

// src[N,C], index i32[N] -> dst[R,C] with dst[index[i]] += src[i] (indices may repeat)
template <typename T>
void scatter_add_rows(const T* src, const int32_t* index, T* dst, int64_t num_index, int64_t dst_rows, int64_t cols);

}  // namespace moe::cpu

// CPU reference elementwise ops and reductions: add, accumulate, scale, cast, sums.
// Raw pointers only; reductions accumulate in double.
#pragma once

#include <cstdint>

namespace moe::cpu {

// a[n], b[n] -> out[n] = a + b (out may alias a or b)
template <typename T>
void add(const T* a, const T* b, T* out, int64_t n);

// dst[n] += alpha * src[n]
template <typename T>
void accumulate(T* dst, const T* src, double alpha, int64_t n);

// x[n] *= alpha
template <typename T>
void scale(T* x, double alpha, int64_t n);

// src[n] -> dst[n] converted (float <-> double)
template <typename Src, typename Dst>
void cast(const Src* src, Dst* dst, int64_t n);

// x[n] -> sum of x, in double
template <typename T>
double sum(const T* x, int64_t n);

// x[n] -> sum of x^2, in double
template <typename T>
double sum_squares(const T* x, int64_t n);

// x[R,C] -> out[C] = sum over rows (written)
template <typename T>
void column_sum(const T* x, T* out, int64_t rows, int64_t cols);

// x[R,C] non-negative -> acc[0] += weight * sum over rows of the entropy of the row normalised to
// sum 1 (log z - sum x log x / z; zeros add nothing), in double
template <typename T>
void row_entropy_accumulate(const T* x, int64_t rows, int64_t cols, double weight, double* acc);

}  // namespace moe::cpu

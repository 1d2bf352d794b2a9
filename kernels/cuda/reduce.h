// GPU reductions: whole-buffer sums in double (returned to the host) and deterministic column
// reductions (column sums, norm parameter gradients) in two passes without atomics.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// Sum of x[n] (or of x^2 when squares), accumulated in double; synchronises the stream.
double sum_to_host(const void* x, kernels::FloatType type, int64_t n, bool squares, cudaStream_t stream);

// acc[0] += weight * sum(x[n]^2) (of x[n] when !squares; acc: device f64), summed in double:
// per-block partials, then one block adds them in a fixed order (run-to-run deterministic). No
// host copy, no wait.
void sum_accumulate(const void* x, kernels::FloatType type, int64_t n, bool squares, double weight, double* acc,
                    cudaStream_t stream);

// acc[0] += weight * sum over rows r of H(x[r,:] / z_r), z_r = sum_c x[r,c]: the entropy of each
// row of non-negative scores normalised to sum 1 (zeros add nothing; a zero row gives NaN), in
// double, in a fixed order (run-to-run deterministic). No host copy, no wait.
void row_entropy_accumulate(const void* x, kernels::FloatType type, int64_t rows, int64_t cols, double weight,
                            double* acc, cudaStream_t stream);

// Column reduction over rows of a[R,C] (type `in_type`; b the same type when given):
//   v[t,c] = a[t,c]                                  when b is null
//   v[t,c] = a[t,c] * (b[t,c] - shift[t]) * scale[t]  otherwise (shift may be null = 0)
// out[c] = (accumulate ? out[c] : 0) + sum_t v[t,c]; out of `out_type`. When plain_out is
// given (f32, always accumulated), plain_out[c] += sum_t a[t,c] in the same pass (LayerNorm db).
// scale and shift are f32[R]. Summation order is fixed: results are run-to-run deterministic.
struct ColumnReduce {
  const void* a = nullptr;
  const void* b = nullptr;
  kernels::FloatType in_type = kernels::FloatType::f32;
  const float* scale = nullptr;
  const float* shift = nullptr;
  int64_t rows = 0, cols = 0;
  void* out = nullptr;
  kernels::FloatType out_type = kernels::FloatType::f32;
  bool accumulate = false;
  float* plain_out = nullptr;
};
void column_reduce(const ColumnReduce& p, cudaStream_t stream);

}  // namespace moe::cuda

// Helpers the balancing kernels share (balance.cu, balance_rows.cu): a block histogram of expert
// ids, fixed-order sums of f64 arrays, the CV^2 of per-expert sums with its gradient.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace moe::cuda::balance_detail {

constexpr int k_block = 256;

// counts[E] (shared) = how many of ids[begin, end) name each expert (ids outside [0, E) count for
// none), made by the whole block; ends with a barrier.
__device__ __forceinline__ void block_histogram(const int32_t* ids, int64_t begin, int64_t end, int num_experts,
                                                int* counts) {
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t n = begin + threadIdx.x; n < end; n += blockDim.x) {
    const int32_t e = ids[n];
    if (e >= 0 && e < num_experts) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
}

// out[0] = the sum of x[n] (f64), in a fixed order.
void sum_f64(const double* x, int64_t n, double* out, cudaStream_t stream);
// out[c] = the sum over chunks of partial[chunk * cols + c], in chunk order (f64).
void sum_partials_f64(const double* partial, int64_t chunks, int64_t cols, double* out, cudaStream_t stream);
// value[0] = coef CV(v)^2 over v[n] (population variance), grad[i] = coef d CV^2 / d v_i
// (written); a zero mean gives 0 and a zero gradient.
void cv_squared(const double* v, int64_t n, double coef, double* value, double* grad, cudaStream_t stream);

}  // namespace moe::cuda::balance_detail

// The Switch loss on the GPU in one block: a shared-memory histogram of the ids, then each
// expert's term, reduced in a fixed order (deterministic).
#include "kernels/cuda/balance.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int k_threads = 1024;

__global__ void switch_balance_kernel(const float* score_sums, const int32_t* ids, int64_t num_ids, int num_experts,
                                      double t, double slots, double alpha, double* value, float* grad_row) {
  extern __shared__ int32_t counts[];  // [E]
  __shared__ double partial[k_threads];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t n = threadIdx.x; n < num_ids; n += blockDim.x) {
    const int32_t e = ids[n];
    if (e >= 0 && e < num_experts) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  const double experts = static_cast<double>(num_experts);
  double mine = 0;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const double f = static_cast<double>(counts[e]) / (slots * t);
    mine += alpha * experts * f * (static_cast<double>(score_sums[e]) / t);
    grad_row[e] = static_cast<float>(alpha * experts * f / t);
  }
  partial[threadIdx.x] = mine;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) value[0] = partial[0];
}

}  // namespace

void switch_balance(const float* score_sums, const int32_t* ids, int64_t tokens, int64_t slots, int64_t num_experts,
                    double alpha, double* value, float* grad_row, cudaStream_t stream) {
  MOE_CHECK(num_experts >= 1 && num_experts * 4 <= 40 * 1024 && slots >= 1 && tokens >= 0,
            "switch_balance: bad shape (tokens ", tokens, ", slots ", slots, ", experts ", num_experts, ")");
  const double t = static_cast<double>(tokens > 0 ? tokens : 1);
  switch_balance_kernel<<<1, k_threads, static_cast<size_t>(num_experts) * 4, stream>>>(
      score_sums, ids, tokens * slots, static_cast<int>(num_experts), t, static_cast<double>(slots), alpha, value,
      grad_row);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

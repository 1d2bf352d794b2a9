// Balancing losses from per-expert statistics on the GPU (Switch and device-level from score sums
// and the counts, given or a block histogram of the ids; importance from per-expert weight sums), the expert counts,
// the aux-loss-free bias update and the fixed-order f64 reductions the balancing kernels share.
#include "kernels/cuda/balance.h"

#include "kernels/cuda/balance_common.cuh"

namespace moe::cuda {

namespace balance_detail {

namespace {

__global__ void sum_f64_kernel(const double* x, int64_t n, double* out) {
  __shared__ double scratch[k_warp];
  double mine = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mine += x[i];
  const double total = block_sum(mine, scratch);
  if (threadIdx.x == 0) out[0] = total;
}

__global__ void sum_partials_kernel(const double* partial, int64_t chunks, int64_t cols, double* out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  double total = 0;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * cols + c];
  out[c] = total;
}

// d var / d v_i = (2/n)(v_i - mean); d mean^-2 / d v_i = -2 mean^-3 / n.
__global__ void cv_squared_kernel(const double* v, int64_t n, double coef, double* value, double* grad) {
  __shared__ double scratch[k_warp];
  const double count = static_cast<double>(n);
  double mine = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mine += v[i];
  const double mean = block_sum(mine, scratch) / count;
  if (mean == 0) {  // the same on every thread
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) grad[i] = 0;
    if (threadIdx.x == 0) value[0] = 0;
    return;
  }
  double squares = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) squares += (v[i] - mean) * (v[i] - mean);
  const double var = block_sum(squares, scratch) / count;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    grad[i] = coef * (2.0 / count * (v[i] - mean) / (mean * mean) - 2.0 * var / (count * mean * mean * mean));
  if (threadIdx.x == 0) value[0] = coef * var / (mean * mean);
}

}  // namespace

void sum_f64(const double* x, int64_t n, double* out, cudaStream_t stream) {
  sum_f64_kernel<<<1, k_block, 0, stream>>>(x, n, out);
  CUDA_CHECK_LAUNCH();
}

void sum_partials_f64(const double* partial, int64_t chunks, int64_t cols, double* out, cudaStream_t stream) {
  if (cols == 0) return;
  sum_partials_kernel<<<static_cast<unsigned>(ceil_div(cols, k_block)), k_block, 0, stream>>>(partial, chunks, cols,
                                                                                              out);
  CUDA_CHECK_LAUNCH();
}

void cv_squared(const double* v, int64_t n, double coef, double* value, double* grad, cudaStream_t stream) {
  cv_squared_kernel<<<1, k_block, 0, stream>>>(v, n, coef, value, grad);
  CUDA_CHECK_LAUNCH();
}

}  // namespace balance_detail

namespace {

using balance_detail::block_histogram;
using balance_detail::k_block;

constexpr int k_sums_threads = 1024;  // one block reads all T*k ids
constexpr int k_chunk = 2048;         // slots per block of the importance partial sums

// counts[E] (shared) = given[E] when given, else the block histogram of ids[num_ids]; ends with a barrier.
__device__ __forceinline__ void slot_counts(const int32_t* ids, const int64_t* given, int64_t num_ids, int num_experts,
                                            int* counts) {
  if (given == nullptr) {
    block_histogram(ids, 0, num_ids, num_experts, counts);
    return;
  }
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) counts[e] = static_cast<int>(given[e]);
  __syncthreads();
}

__global__ void switch_balance_kernel(const float* score_sums, const int32_t* ids, const int64_t* given,
                                      int64_t num_ids, int num_experts, double t, double slots, double alpha,
                                      double* value, float* grad_row) {
  extern __shared__ int counts[];  // [E]
  __shared__ double scratch[k_warp];
  slot_counts(ids, given, num_ids, num_experts, counts);
  const double experts = static_cast<double>(num_experts);
  double mine = 0;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const double f = static_cast<double>(counts[e]) / (slots * t);
    mine += alpha * experts * f * (static_cast<double>(score_sums[e]) / t);
    grad_row[e] = static_cast<float>(alpha * experts * f / t);
  }
  const double total = block_sum(mine, scratch);
  if (threadIdx.x == 0) value[0] = total;
}

// A thread per group g: f'_g, P'_g and the gradient of its experts.
__global__ void device_balance_kernel(const float* score_sums, const int32_t* ids, const int64_t* given,
                                      int64_t num_ids, int num_experts, int groups, double t, double slots,
                                      double alpha, double* value, float* grad_row) {
  extern __shared__ int counts[];  // [E]
  __shared__ double scratch[k_warp];
  slot_counts(ids, given, num_ids, num_experts, counts);
  const int size = num_experts / groups;
  double mine = 0;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    double f_mean = 0, p_sum = 0;
    for (int i = g * size; i < (g + 1) * size; ++i) {
      f_mean += static_cast<double>(num_experts) / (slots * t) * static_cast<double>(counts[i]);
      p_sum += static_cast<double>(score_sums[i]) / t;
    }
    f_mean /= static_cast<double>(size);
    mine += alpha * f_mean * p_sum;
    for (int i = g * size; i < (g + 1) * size; ++i) grad_row[i] = static_cast<float>(alpha * f_mean / t);
  }
  const double total = block_sum(mine, scratch);
  if (threadIdx.x == 0) value[0] = total;
}

// Per block a shared histogram, then one global atomic per expert (integer sums: exact).
__global__ void count_experts_kernel(const int32_t* ids, int64_t num_ids, int num_experts, unsigned long long* counts) {
  extern __shared__ int block_counts[];  // [E]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) block_counts[e] = 0;
  __syncthreads();
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < num_ids;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = ids[n];
    if (e >= 0 && e < num_experts) atomicAdd(&block_counts[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    if (block_counts[e] > 0) atomicAdd(&counts[e], static_cast<unsigned long long>(block_counts[e]));
  }
}

// partial[chunk, e] = the weights of chunk's slots that went to e, summed in slot order.
__global__ void importance_partials_kernel(const float* weights, const int32_t* ids, int64_t num_slots,
                                           int num_experts, double* partial) {
  __shared__ int32_t chunk_ids[k_chunk];
  __shared__ float chunk_weights[k_chunk];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * k_chunk;
  const int len = static_cast<int>(num_slots - begin < k_chunk ? num_slots - begin : k_chunk);
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    chunk_ids[i] = ids[begin + i];
    chunk_weights[i] = weights[begin + i];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    double sum = 0;
    for (int i = 0; i < len; ++i)
      if (chunk_ids[i] == e) sum += static_cast<double>(chunk_weights[i]);
    partial[static_cast<int64_t>(blockIdx.x) * num_experts + e] = sum;
  }
}

__global__ void importance_grad_kernel(const int32_t* ids, int64_t num_slots, int num_experts, const double* grad,
                                       float* dweights) {
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < num_slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = ids[s];
    if (e >= 0 && e < num_experts) dweights[s] = static_cast<float>(static_cast<double>(dweights[s]) + grad[e]);
  }
}

__global__ void update_expert_bias_kernel(float* bias, const int64_t* loads, int num_experts, double gamma,
                                          const float* skip) {
  __shared__ long long total;
  if (skip != nullptr && isnan(*skip)) return;  // the same on every thread
  if (threadIdx.x == 0) {
    long long sum = 0;
    for (int e = 0; e < num_experts; ++e) sum += loads[e];
    total = sum;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const long long diff = static_cast<long long>(num_experts) * loads[e] - total;
    bias[e] = static_cast<float>(static_cast<double>(bias[e]) - gamma * static_cast<double>((diff > 0) - (diff < 0)));
  }
}

// The shared histogram holds E ints, each at most tokens * slots.
void check_sums_shape(const char* op, int64_t tokens, int64_t slots, int64_t num_experts) {
  MOE_CHECK(num_experts >= 1 && num_experts * 4 <= 40 * 1024 && slots >= 1 && tokens >= 0 &&
                tokens <= INT32_MAX / slots,
            op, ": bad shape (tokens ", tokens, ", slots ", slots, ", experts ", num_experts, ")");
}

}  // namespace

void switch_balance(const float* score_sums, const int32_t* ids, const int64_t* counts, int64_t tokens, int64_t slots,
                    int64_t num_experts, double alpha, double* value, float* grad_row, cudaStream_t stream) {
  check_sums_shape("switch_balance", tokens, slots, num_experts);
  const double t = static_cast<double>(tokens > 0 ? tokens : 1);
  switch_balance_kernel<<<1, counts ? k_block : k_sums_threads, static_cast<size_t>(num_experts) * 4, stream>>>(
      score_sums, ids, counts, tokens * slots, static_cast<int>(num_experts), t, static_cast<double>(slots), alpha,
      value, grad_row);
  CUDA_CHECK_LAUNCH();
}

void device_balance(const float* score_sums, const int32_t* ids, const int64_t* counts, int64_t tokens, int64_t slots,
                    int64_t num_experts, int64_t groups, double alpha, double* value, float* grad_row,
                    cudaStream_t stream) {
  check_sums_shape("device_balance", tokens, slots, num_experts);
  MOE_CHECK(groups >= 1 && num_experts % groups == 0, "device_balance: ", groups, " groups do not divide ",
            num_experts, " experts");
  const double t = static_cast<double>(tokens > 0 ? tokens : 1);
  device_balance_kernel<<<1, counts ? k_block : k_sums_threads, static_cast<size_t>(num_experts) * 4, stream>>>(
      score_sums, ids, counts, tokens * slots, static_cast<int>(num_experts), static_cast<int>(groups), t,
      static_cast<double>(slots), alpha, value, grad_row);
  CUDA_CHECK_LAUNCH();
}

void count_experts(const int32_t* ids, int64_t num_ids, int64_t num_experts, int64_t* counts, cudaStream_t stream) {
  MOE_CHECK(num_experts >= 1 && num_experts * 4 <= 40 * 1024, "count_experts: ", num_experts,
            " experts do not fit the shared histogram");
  if (num_ids == 0) return;
  count_experts_kernel<<<grid_for(num_ids, k_block, 1024), k_block, static_cast<size_t>(num_experts) * 4, stream>>>(
      ids, num_ids, static_cast<int>(num_experts), reinterpret_cast<unsigned long long*>(counts));
  CUDA_CHECK_LAUNCH();
}

// Per-chunk sums, their fixed-order total per expert, CV^2 and its gradient, then each slot's.
void importance_balance(const float* weights, const int32_t* ids, int64_t num_slots, int64_t num_experts, double coef,
                        double* value, float* dweights, cudaStream_t stream) {
  MOE_CHECK(num_experts >= 1 && num_slots >= 0, "importance_balance: bad shape (slots ", num_slots, ", experts ",
            num_experts, ")");
  const int64_t chunks = num_slots > 0 ? ceil_div(num_slots, k_chunk) : 1;
  Scratch partial(static_cast<size_t>(chunks * num_experts) * sizeof(double), stream);
  Scratch importance(static_cast<size_t>(2 * num_experts) * sizeof(double), stream);  // [I | dI]
  double* sums = importance.as<double>();
  double* grad = sums + num_experts;
  importance_partials_kernel<<<static_cast<unsigned>(chunks), k_block, 0, stream>>>(
      weights, ids, num_slots, static_cast<int>(num_experts), partial.as<double>());
  CUDA_CHECK_LAUNCH();
  balance_detail::sum_partials_f64(partial.as<double>(), chunks, num_experts, sums, stream);
  balance_detail::cv_squared(sums, num_experts, coef, value, grad, stream);
  if (num_slots == 0) return;
  importance_grad_kernel<<<grid_for(num_slots, k_block), k_block, 0, stream>>>(ids, num_slots,
                                                                              static_cast<int>(num_experts), grad,
                                                                              dweights);
  CUDA_CHECK_LAUNCH();
}

void update_expert_bias(float* bias, const int64_t* loads, int64_t num_experts, double gamma, const float* skip,
                        cudaStream_t stream) {
  MOE_CHECK(num_experts >= 1, "update_expert_bias: expert count must be positive, got ", num_experts);
  update_expert_bias_kernel<<<1, k_block, 0, stream>>>(bias, loads, static_cast<int>(num_experts), gamma, skip);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

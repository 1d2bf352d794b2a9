// Balancing losses that read every token's row on the GPU: the z-loss, the sequence-level loss and
// the load loss of noisy top-k gating. Row values and column sums are reduced in a fixed order.
#include "kernels/cuda/balance.h"

#include "kernels/cuda/balance_common.cuh"

namespace moe::cuda {

namespace {

using balance_detail::block_histogram;
using balance_detail::k_block;

constexpr int k_rows_per_chunk = 256;  // rows per block of the load's column partial sums
constexpr double k_inv_sqrt2 = 0.70710678118654752440;
constexpr double k_inv_sqrt_2pi = 0.39894228040143267794;

__device__ __forceinline__ double warp_max_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(k_full_mask, v, o));
  return v;
}
__device__ __forceinline__ double softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }
__device__ __forceinline__ double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  const double e = exp(x);
  return e / (1.0 + e);
}
__device__ __forceinline__ double normal_cdf(double z) { return 0.5 * erfc(-z * k_inv_sqrt2); }
__device__ __forceinline__ double normal_pdf(double z) { return k_inv_sqrt_2pi * exp(-0.5 * z * z); }

// A warp per token row: lse in double, the row's share of the value and its gradient.
__global__ void z_rows_kernel(const float* logits, int64_t tokens, int num_experts, double coef, double t,
                              double* row_values, float* dlogits) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (row >= tokens) return;  // the whole warp
  const float* x = logits + row * num_experts;
  float* dx = dlogits + row * num_experts;
  double m = -INFINITY;
  for (int j = lane; j < num_experts; j += k_warp) m = fmax(m, static_cast<double>(x[j]));
  m = warp_max_f64(m);
  double sum = 0;
  for (int j = lane; j < num_experts; j += k_warp) sum += exp(static_cast<double>(x[j]) - m);
  const double lse = m + log(warp_sum(sum));
  for (int j = lane; j < num_experts; j += k_warp) {
    const double softmax = exp(static_cast<double>(x[j]) - lse);
    dx[j] = static_cast<float>(static_cast<double>(dx[j]) + coef * 2.0 * lse * softmax / t);
  }
  if (lane == 0) row_values[row] = coef * lse * lse / t;
}

// A block per sequence: a_i = scale f_i / S from its slots, then a warp per token row:
// value share dot = sum_i a_i s_i / z, dscores[r,m] += (a_m - dot) / z.
__global__ void seq_rows_kernel(const float* scores, const int32_t* ids, int num_experts, int slots, int64_t seq_len,
                                double scale, double* row_values, float* dscores) {
  extern __shared__ double a[];                           // [E], then the counts
  int* counts = reinterpret_cast<int*>(a + num_experts);  // [E]
  const int64_t first = static_cast<int64_t>(blockIdx.x) * seq_len;
  block_histogram(ids, first * slots, (first + seq_len) * slots, num_experts, counts);
  const double per_slot =
      static_cast<double>(num_experts) / (static_cast<double>(slots) * static_cast<double>(seq_len));
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
    a[e] = scale * (per_slot * static_cast<double>(counts[e])) / static_cast<double>(seq_len);
  __syncthreads();
  const int lane = threadIdx.x % k_warp, num_warps = blockDim.x / k_warp;
  for (int64_t row = first + threadIdx.x / k_warp; row < first + seq_len; row += num_warps) {
    const float* s = scores + row * num_experts;
    double z = 0, weighted = 0;
    for (int j = lane; j < num_experts; j += k_warp) {
      z += static_cast<double>(s[j]);
      weighted += a[j] * static_cast<double>(s[j]);
    }
    z = warp_sum(z);
    const double dot = warp_sum(weighted) / z;
    float* ds = dscores + row * num_experts;
    for (int j = lane; j < num_experts; j += k_warp)
      ds[j] = static_cast<float>(static_cast<double>(ds[j]) + (a[j] - dot) / z);
    if (lane == 0) row_values[row] = dot;
  }
}

// One token row of noisy gating, made by the block: h = clean + normal * softplus(raw) and each
// expert's rank by h (descending, ties to the lower index) in shared memory; order[0], order[1] =
// the experts ranked k-1 and k. Ends with a barrier.
__device__ void load_row_ranks(const float* clean, const float* raw_noise, const float* normal, int num_experts, int k,
                               double* h, int* rank, int* order) {
  for (int j = threadIdx.x; j < num_experts; j += blockDim.x)
    h[j] = static_cast<double>(clean[j]) + static_cast<double>(normal[j]) * softplus(static_cast<double>(raw_noise[j]));
  __syncthreads();
  for (int j = threadIdx.x; j < num_experts; j += blockDim.x) {
    int r = 0;
    for (int q = 0; q < num_experts; ++q) r += (h[q] > h[j] || (h[q] == h[j] && q < j)) ? 1 : 0;
    rank[j] = r;
    if (r == k - 1) order[0] = j;
    if (r == k) order[1] = j;
  }
  __syncthreads();
}

// z_ti = (clean_ti - h_tj) / softplus(raw_ti), j = order[1] (the k-th largest of the others)
// for an expert in the top k, order[0] otherwise.
__device__ __forceinline__ double load_z(const float* clean, const float* raw_noise, const double* h, const int* rank,
                                         const int* order, int i, int k) {
  const int j = rank[i] < k ? order[1] : order[0];
  return (static_cast<double>(clean[i]) - h[j]) / softplus(static_cast<double>(raw_noise[i]));
}

// A block per token row: phi[t,i] = Phi(z_ti).
__global__ void load_phi_kernel(const float* clean, const float* raw_noise, const float* normal, int num_experts,
                                int k, double* phi) {
  extern __shared__ double h[];                      // [E], then the ranks
  int* rank = reinterpret_cast<int*>(h + num_experts);  // [E]
  __shared__ int order[2];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * num_experts;
  load_row_ranks(clean + offset, raw_noise + offset, normal + offset, num_experts, k, h, rank, order);
  for (int i = threadIdx.x; i < num_experts; i += blockDim.x)
    phi[offset + i] = normal_cdf(load_z(clean + offset, raw_noise + offset, h, rank, order, i, k));
}

// partial[chunk, c] = the sum of x[r, c] over the chunk's rows, in row order.
__global__ void column_partials_kernel(const double* x, int64_t rows, int64_t cols, double* partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * k_rows_per_chunk;
  const int64_t end = begin + k_rows_per_chunk < rows ? begin + k_rows_per_chunk : rows;
  double sum = 0;
  for (int64_t r = begin; r < end; ++r) sum += x[r * cols + c];
  partial[static_cast<int64_t>(blockIdx.y) * cols + c] = sum;
}

// A block per token row: g_i = dLoad_i phi'(z_i) / sp_i into expert i's own inputs, and the sums
// of g over the top k (threshold order[1]) and the rest (threshold order[0]) into theirs.
__global__ void load_grad_kernel(const float* clean, const float* raw_noise, const float* normal, int num_experts,
                                 int k, const double* dload, float* dclean, float* draw_noise) {
  extern __shared__ double h[];
  int* rank = reinterpret_cast<int*>(h + num_experts);
  __shared__ int order[2];
  __shared__ double scratch[k_warp];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * num_experts;
  const float *c = clean + offset, *raw = raw_noise + offset, *n = normal + offset;
  load_row_ranks(c, raw, n, num_experts, k, h, rank, order);
  double top = 0, rest = 0;
  for (int i = threadIdx.x; i < num_experts; i += blockDim.x) {
    const double z = load_z(c, raw, h, rank, order, i, k);
    const double g = dload[i] * normal_pdf(z) / softplus(static_cast<double>(raw[i]));
    (rank[i] < k ? top : rest) += g;
  }
  top = block_sum(top, scratch);
  rest = block_sum(rest, scratch);
  for (int i = threadIdx.x; i < num_experts; i += blockDim.x) {
    const double z = load_z(c, raw, h, rank, order, i, k);
    const double sig = sigmoid(static_cast<double>(raw[i]));
    const double g = dload[i] * normal_pdf(z) / softplus(static_cast<double>(raw[i]));
    // As the threshold of the others: d thr / d clean_j = 1, d thr / d raw_j = normal_j sigmoid(raw_j).
    const double as_threshold = (i == order[1] ? top : 0.0) + (i == order[0] ? rest : 0.0);
    double gc = g - as_threshold, gr = -g * z * sig - as_threshold * static_cast<double>(n[i]) * sig;
    dclean[offset + i] = static_cast<float>(static_cast<double>(dclean[offset + i]) + gc);
    draw_noise[offset + i] = static_cast<float>(static_cast<double>(draw_noise[offset + i]) + gr);
  }
}

size_t row_shared_bytes(const char* op, int64_t num_experts) {
  const size_t bytes = static_cast<size_t>(num_experts) * (sizeof(double) + sizeof(int));
  MOE_CHECK(num_experts >= 1 && bytes <= 40 * 1024, op, ": ", num_experts,
            " experts do not fit a row in shared memory");
  return bytes;
}

}  // namespace

void z_balance(const float* logits, int64_t tokens, int64_t num_experts, double coef, double* value, float* dlogits,
               cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && num_experts >= 1, "z_balance: bad shape (tokens ", tokens, ", experts ", num_experts, ")");
  Scratch row_values(static_cast<size_t>(tokens) * sizeof(double), stream);
  if (tokens > 0) {
    const int rows_per_block = k_block / k_warp;
    z_rows_kernel<<<static_cast<unsigned>(ceil_div(tokens, rows_per_block)), k_block, 0, stream>>>(
        logits, tokens, static_cast<int>(num_experts), coef, static_cast<double>(tokens), row_values.as<double>(),
        dlogits);
    CUDA_CHECK_LAUNCH();
  }
  balance_detail::sum_f64(row_values.as<double>(), tokens, value, stream);
}

void seq_balance(const float* scores, const int32_t* ids, int64_t tokens, int64_t num_experts, int64_t slots,
                 int64_t seq_len, double coef, double* value, float* dscores, cudaStream_t stream) {
  MOE_CHECK(seq_len >= 1 && tokens >= 0 && tokens % seq_len == 0 && slots >= 1, "seq_balance: seq_len = ", seq_len,
            " does not divide tokens = ", tokens);
  const size_t shared = row_shared_bytes("seq_balance", num_experts);
  const int64_t num_seqs = tokens / seq_len;
  Scratch row_values(static_cast<size_t>(tokens) * sizeof(double), stream);
  if (num_seqs > 0) {
    seq_rows_kernel<<<static_cast<unsigned>(num_seqs), k_block, shared, stream>>>(
        scores, ids, static_cast<int>(num_experts), static_cast<int>(slots), seq_len,
        coef / static_cast<double>(num_seqs), row_values.as<double>(), dscores);
    CUDA_CHECK_LAUNCH();
  }
  balance_detail::sum_f64(row_values.as<double>(), tokens, value, stream);
}

// Phi per (token, expert), the loads as fixed-order column sums, CV^2 and dLoad, the gradients.
void load_balance(const float* clean, const float* raw_noise, const float* normal, int64_t tokens, int64_t num_experts,
                  int64_t k, double coef, double* value, float* dclean, float* draw_noise, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && k < num_experts, "load_balance: needs 1 <= k < E, got k = ", k, ", E = ",
            num_experts);
  const size_t shared = row_shared_bytes("load_balance", num_experts);
  const int64_t chunks = tokens > 0 ? ceil_div(tokens, k_rows_per_chunk) : 1;
  MOE_CHECK(chunks <= 65535, "load_balance: ", tokens, " tokens exceed the column-sum grid");
  Scratch phi(static_cast<size_t>(tokens * num_experts) * sizeof(double), stream);
  Scratch partial(static_cast<size_t>(chunks * num_experts) * sizeof(double), stream);
  Scratch load(static_cast<size_t>(2 * num_experts) * sizeof(double), stream);  // [Load | coef dCV^2/dLoad]
  double* dload = load.as<double>() + num_experts;
  const int E = static_cast<int>(num_experts), top = static_cast<int>(k);
  if (tokens > 0) {
    load_phi_kernel<<<static_cast<unsigned>(tokens), k_block, shared, stream>>>(clean, raw_noise, normal, E, top,
                                                                                phi.as<double>());
    CUDA_CHECK_LAUNCH();
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(num_experts, k_block)), static_cast<unsigned>(chunks));
  column_partials_kernel<<<grid, k_block, 0, stream>>>(phi.as<double>(), tokens, num_experts, partial.as<double>());
  CUDA_CHECK_LAUNCH();
  balance_detail::sum_partials_f64(partial.as<double>(), chunks, num_experts, load.as<double>(), stream);
  balance_detail::cv_squared(load.as<double>(), num_experts, coef, value, dload, stream);
  if (tokens == 0) return;
  load_grad_kernel<<<static_cast<unsigned>(tokens), k_block, shared, stream>>>(clean, raw_noise, normal, E, top, dload,
                                                                               dclean, draw_noise);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

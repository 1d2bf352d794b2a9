// Router kernels: a warp per token with the token's E probabilities in shared memory; top-k by
// k rounds of warp argmax (value, then lower index), each round masking its winner.
#include "kernels/cuda/router.h"

#include <climits>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int k_max_warps = 4;
constexpr int64_t k_max_smem = 48 * 1024;

// (value, index) argmax across the warp: larger value wins, equal values go to the lower index.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(k_full_mask, v, o);
    const int oi = __shfl_xor_sync(k_full_mask, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

// logits[T,E] -> probs[T,E], ids[T,k], weights[T,k]; warp per token, p = smem[warp*E ...]
__global__ void softmax_topk_forward_kernel(const float* logits, float* probs, int32_t* ids, float* weights,
                                            int64_t tokens, int num_experts, int k, bool renormalize) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + warp;
  if (row >= tokens) return;
  const int E = num_experts;
  float* p = smem + warp * E;
  const float* lr = logits + row * E;
  float m = -INFINITY;
  for (int j = lane; j < E; j += k_warp) m = fmaxf(m, lr[j]);
  m = warp_max(m);
  float s = 0;
  for (int j = lane; j < E; j += k_warp) {
    const float e = expf(lr[j] - m);
    p[j] = e;
    s += e;
  }
  const float inv = 1.0f / warp_sum(s);
  for (int j = lane; j < E; j += k_warp) {
    p[j] *= inv;
    probs[row * E + j] = p[j];
  }
  __syncwarp();
  int32_t* row_ids = ids + row * k;
  float* row_w = weights + row * k;
  float total = 0;
  for (int r = 0; r < k; ++r) {
    float best = -1.0f;  // below every probability; masked winners hold -inf
    int best_i = INT_MAX;
    for (int j = lane; j < E; j += k_warp) {  // ascending j: strict > keeps the lower index
      if (p[j] > best) {
        best = p[j];
        best_i = j;
      }
    }
    warp_argmax(best, best_i);
    total += best;
    if (lane == 0) {
      row_ids[r] = best_i;
      row_w[r] = best;
      p[best_i] = -INFINITY;
    }
    __syncwarp();
  }
  if (renormalize) {
    const float inv_total = 1.0f / total;
    for (int r = lane; r < k; r += k_warp) row_w[r] *= inv_total;
  }
}

// probs[T,E], ids/weights/dweights[T,k], expert_grad[E] -> dlogits[T,E]; dp = smem[warp*E ...]
__global__ void softmax_topk_backward_kernel(const float* probs, const int32_t* ids, const float* weights,
                                             const float* dweights, const float* expert_grad, float* dlogits,
                                             int64_t tokens, int num_experts, int k, bool renormalize) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + warp;
  if (row >= tokens) return;
  const int E = num_experts;
  float* dp = smem + warp * E;
  const float* pr = probs + row * E;
  const int32_t* row_ids = ids + row * k;
  const float* row_w = weights + row * k;
  const float* row_dw = dweights + row * k;
  for (int j = lane; j < E; j += k_warp) dp[j] = expert_grad[j];
  // Through w_s = p_s / Z: dp_i += (dw_i - sum_s dw_s w_s) / Z, Z = sum of selected probs.
  float dw_dot_w = 0, z = 0;
  if (renormalize) {
    for (int r = lane; r < k; r += k_warp) {
      dw_dot_w += row_dw[r] * row_w[r];
      z += pr[row_ids[r]];
    }
    dw_dot_w = warp_sum(dw_dot_w);
    z = warp_sum(z);
  }
  __syncwarp();
  for (int r = lane; r < k; r += k_warp) {  // distinct ids: no two lanes write one element
    const int i = row_ids[r];
    dp[i] += renormalize ? (row_dw[r] - dw_dot_w) / z : row_dw[r];
  }
  __syncwarp();
  float dot = 0;
  for (int j = lane; j < E; j += k_warp) dot += pr[j] * dp[j];
  dot = warp_sum(dot);
  for (int j = lane; j < E; j += k_warp) dlogits[row * E + j] = pr[j] * (dp[j] - dot);
}

// Warps per block so that warps * E floats fit the default 48 KB of shared memory.
int warps_for(int64_t num_experts) {
  MOE_CHECK(num_experts > 0 && num_experts * 4 <= k_max_smem, "router: ", num_experts,
            " experts exceed the supported maximum of ", k_max_smem / 4);
  int64_t warps = k_max_smem / (num_experts * 4);
  return static_cast<int>(warps < k_max_warps ? warps : k_max_warps);
}

}  // namespace

void softmax_topk_forward(const float* logits, float* probs, int32_t* ids, float* weights, const RouterShape& s,
                          bool renormalize, cudaStream_t stream) {
  MOE_CHECK(s.tokens >= 0 && s.k >= 1 && s.k <= s.num_experts, "router: bad shape (tokens ", s.tokens, ", experts ",
            s.num_experts, ", k ", s.k, ")");
  if (s.tokens == 0) return;
  const int warps = warps_for(s.num_experts);
  const size_t smem = static_cast<size_t>(warps) * s.num_experts * sizeof(float);
  softmax_topk_forward_kernel<<<static_cast<unsigned>(ceil_div(s.tokens, warps)), warps * k_warp, smem, stream>>>(
      logits, probs, ids, weights, s.tokens, static_cast<int>(s.num_experts), static_cast<int>(s.k), renormalize);
  CUDA_CHECK_LAUNCH();
}

void softmax_topk_backward(const float* probs, const int32_t* ids, const float* weights, const float* dweights,
                           const float* expert_grad, float* dlogits, const RouterShape& s, bool renormalize,
                           cudaStream_t stream) {
  MOE_CHECK(s.tokens >= 0 && s.k >= 1 && s.k <= s.num_experts, "router: bad shape (tokens ", s.tokens, ", experts ",
            s.num_experts, ", k ", s.k, ")");
  if (s.tokens == 0) return;
  const int warps = warps_for(s.num_experts);
  const size_t smem = static_cast<size_t>(warps) * s.num_experts * sizeof(float);
  softmax_topk_backward_kernel<<<static_cast<unsigned>(ceil_div(s.tokens, warps)), warps * k_warp, smem, stream>>>(
      probs, ids, weights, dweights, expert_grad, dlogits, s.tokens, static_cast<int>(s.num_experts),
      static_cast<int>(s.k), renormalize);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

// Router kernels: a warp per token with the token's selection keys in shared memory. Groups
// are ranked by counting (rank = groups with a larger max, or an equal max and a lower index),
// then the top-k are k rounds of warp argmax (value, then lower index) masking each winner.
#include "kernels/cuda/router.h"

#include <climits>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int k_max_warps = 4;
constexpr int64_t k_max_smem = 48 * 1024;

// Kernel-side copy of the options (32-bit sizes; the launcher checks they fit).
struct Options {
  int tokens_per_block, num_experts, k, num_groups, top_groups;
  bool sigmoid, renormalize, softmax_after_topk;
};

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

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// Shared memory per warp: key[E] (scores + bias; -inf once excluded), then group_max[G].
// logits[T,E], bias[E] or nullptr -> scores[T,E], ids[T,k], weights[T,k]
__global__ void router_topk_forward_kernel(const float* logits, const float* bias, float* scores, int32_t* ids,
                                           float* weights, int64_t tokens, Options o) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * o.tokens_per_block + warp;
  if (row >= tokens) return;
  const int E = o.num_experts, G = o.num_groups, k = o.k;
  float* key = smem + warp * (E + G);
  float* group_max = key + E;
  const float* lr = logits + row * E;
  float* sr = scores + row * E;
  if (o.sigmoid) {
    for (int j = lane; j < E; j += k_warp) {
      const float s = sigmoidf(lr[j]);
      sr[j] = s;
      key[j] = bias ? __fadd_rn(s, bias[j]) : s;  // _rn: never fused, so the key is exactly s + b
    }
  } else {
    float m = -INFINITY;
    for (int j = lane; j < E; j += k_warp) m = fmaxf(m, lr[j]);
    m = warp_max(m);
    float sum = 0;
    for (int j = lane; j < E; j += k_warp) {
      key[j] = expf(lr[j] - m);
      sum += key[j];
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < E; j += k_warp) {
      const float s = __fmul_rn(key[j], inv);
      sr[j] = s;
      key[j] = bias ? __fadd_rn(s, bias[j]) : s;
    }
  }
  __syncwarp();
  if (G > 0) {  // keep the top_groups groups by their largest key; exclude the rest
    const int size = E / G;
    for (int g = lane; g < G; g += k_warp) {
      float m = -INFINITY;
      for (int j = g * size; j < (g + 1) * size; ++j) m = fmaxf(m, key[j]);
      group_max[g] = m;
    }
    __syncwarp();
    for (int g = lane; g < G; g += k_warp) {  // each lane writes only its own groups' keys
      const float mine = group_max[g];
      int rank = 0;
      for (int h = 0; h < G; ++h) rank += group_max[h] > mine || (group_max[h] == mine && h < g);
      if (rank >= o.top_groups) {
        for (int j = g * size; j < (g + 1) * size; ++j) key[j] = -INFINITY;
      }
    }
    __syncwarp();
  }
  int32_t* row_ids = ids + row * k;
  float* row_w = weights + row * k;
  for (int r = 0; r < k; ++r) {
    float best = -INFINITY;  // excluded experts and earlier winners hold -inf and never win
    int best_i = INT_MAX;
    for (int j = lane; j < E; j += k_warp) {  // ascending j: strict > keeps the lower index
      if (key[j] > best) {
        best = key[j];
        best_i = j;
      }
    }
    warp_argmax(best, best_i);
    if (lane == r % k_warp) row_ids[r] = best_i;  // INT_MAX only for a row of NaN keys
    if (lane == 0 && best_i < E) key[best_i] = -INFINITY;
    __syncwarp();
  }
  // Lane l owns rounds l, l + 32, ...: it wrote those ids itself; the scores were published by
  // the __syncwarp after the score loop. A NaN row (no winner, id INT_MAX) gets NaN weights.
  auto selected = [&](const float* v, int r) { return row_ids[r] < E ? v[row_ids[r]] : NAN; };
  if (o.softmax_after_topk) {
    float m = -INFINITY;
    for (int r = lane; r < k; r += k_warp) m = fmaxf(m, selected(lr, r));
    m = warp_max(m);
    float sum = 0;
    for (int r = lane; r < k; r += k_warp) sum += expf(selected(lr, r) - m);
    const float inv = 1.0f / warp_sum(sum);
    for (int r = lane; r < k; r += k_warp) row_w[r] = expf(selected(lr, r) - m) * inv;
  } else {
    float total = 0;
    for (int r = lane; r < k; r += k_warp) total += selected(sr, r);
    total = warp_sum(total);
    const bool renormalize = o.renormalize || o.sigmoid;
    for (int r = lane; r < k; r += k_warp) row_w[r] = renormalize ? selected(sr, r) / total : selected(sr, r);
  }
}

// Shared memory per warp: dp[E], the gradient on the scores.
// logits, scores[T,E], ids, weights, dweights[T,k], dscores[T,E] or nullptr -> dlogits[T,E]
__global__ void router_topk_backward_kernel(const float* logits, const float* scores, const int32_t* ids,
                                            const float* weights, const float* dweights, const float* dscores,
                                            float* dlogits, int64_t tokens, Options o) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * o.tokens_per_block + warp;
  if (row >= tokens) return;
  const int E = o.num_experts, k = o.k;
  float* dp = smem + warp * E;
  const float* pr = scores + row * E;
  const float* lr = logits + row * E;
  const int32_t* row_ids = ids + row * k;
  const float* row_w = weights + row * k;
  const float* row_dw = dweights + row * k;
  float* dl = dlogits + row * E;
  for (int j = lane; j < E; j += k_warp) dp[j] = dscores ? dscores[row * E + j] : 0.0f;
  float dw_dot_w = 0;  // sum_s dw_s w_s: used by both normalisations
  for (int r = lane; r < k; r += k_warp) dw_dot_w += row_dw[r] * row_w[r];
  dw_dot_w = warp_sum(dw_dot_w);
  const bool renormalize = !o.softmax_after_topk && (o.renormalize || o.sigmoid);
  float z = 0;  // sum of the selected scores: w_s = p_s / z, so dp_i += (dw_i - dw.w) / z
  if (renormalize) {
    for (int r = lane; r < k; r += k_warp) z += row_ids[r] >= 0 && row_ids[r] < E ? pr[row_ids[r]] : 0.0f;
    z = warp_sum(z);
  }
  __syncwarp();
  if (!o.softmax_after_topk) {
    for (int r = lane; r < k; r += k_warp) {  // distinct ids: no two lanes write one element
      const int i = row_ids[r];
      if (i >= 0 && i < E) dp[i] += renormalize ? (row_dw[r] - dw_dot_w) / z : row_dw[r];
    }
  }
  __syncwarp();
  if (o.sigmoid) {
    for (int j = lane; j < E; j += k_warp) dl[j] = dp[j] * sigmoidf(lr[j]) * sigmoidf(-lr[j]);
  } else {
    float dot = 0;
    for (int j = lane; j < E; j += k_warp) dot += pr[j] * dp[j];
    dot = warp_sum(dot);
    for (int j = lane; j < E; j += k_warp) dl[j] = pr[j] * (dp[j] - dot);
  }
  if (o.softmax_after_topk) {  // w = softmax(selected logits): dl_s += w_s (dw_s - dw.w)
    __syncwarp();
    for (int r = lane; r < k; r += k_warp) {
      const int i = row_ids[r];
      if (i >= 0 && i < E) dl[i] += row_w[r] * (row_dw[r] - dw_dot_w);
    }
  }
}

Options options_of(const kernels::TopKOptions& r, int64_t tokens, int64_t num_experts, int64_t floats_per_warp) {
  MOE_CHECK(tokens >= 0 && r.k >= 1 && r.k <= num_experts, "router: bad shape (tokens ", tokens, ", experts ",
            num_experts, ", k ", r.k, ")");
  MOE_CHECK(floats_per_warp * 4 <= k_max_smem, "router: ", num_experts, " experts and ", r.num_groups,
            " groups exceed the supported maximum of ", k_max_smem / 4, " together");
  Options o;
  const int64_t warps = k_max_smem / (floats_per_warp * 4);  // warps * E floats fit 48 KB
  o.tokens_per_block = static_cast<int>(warps < k_max_warps ? warps : k_max_warps);
  o.num_experts = static_cast<int>(num_experts);
  o.k = static_cast<int>(r.k);
  o.num_groups = static_cast<int>(r.num_groups);
  o.top_groups = static_cast<int>(r.top_groups);
  o.sigmoid = r.score == kernels::ScoreFunction::sigmoid;
  o.renormalize = r.renormalize;
  o.softmax_after_topk = r.softmax_after_topk;
  return o;
}

}  // namespace

void router_topk_forward(const float* logits, const float* bias, float* scores, int32_t* ids, float* weights,
                         int64_t tokens, int64_t num_experts, const kernels::TopKOptions& r, cudaStream_t stream) {
  MOE_CHECK(r.num_groups == 0 || (r.num_groups > 0 && num_experts % r.num_groups == 0 && r.top_groups >= 1 &&
                                  r.top_groups <= r.num_groups && r.k <= r.top_groups * (num_experts / r.num_groups)),
            "router: bad groups (experts ", num_experts, ", groups ", r.num_groups, ", top ", r.top_groups, ", k ",
            r.k, ")");
  const int64_t per_warp = num_experts + r.num_groups;
  const Options o = options_of(r, tokens, num_experts, per_warp);
  if (tokens == 0) return;
  const size_t smem = static_cast<size_t>(o.tokens_per_block) * per_warp * sizeof(float);
  router_topk_forward_kernel<<<static_cast<unsigned>(ceil_div(tokens, o.tokens_per_block)),
                               o.tokens_per_block * k_warp, smem, stream>>>(logits, bias, scores, ids, weights,
                                                                            tokens, o);
  CUDA_CHECK_LAUNCH();
}

void router_topk_backward(const float* logits, const float* scores, const int32_t* ids, const float* weights,
                          const float* dweights, const float* dscores, float* dlogits, int64_t tokens,
                          int64_t num_experts, const kernels::TopKOptions& r, cudaStream_t stream) {
  const Options o = options_of(r, tokens, num_experts, num_experts);
  if (tokens == 0) return;
  const size_t smem = static_cast<size_t>(o.tokens_per_block) * num_experts * sizeof(float);
  router_topk_backward_kernel<<<static_cast<unsigned>(ceil_div(tokens, o.tokens_per_block)),
                                o.tokens_per_block * k_warp, smem, stream>>>(logits, scores, ids, weights, dweights,
                                                                             dscores, dlogits, tokens, o);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

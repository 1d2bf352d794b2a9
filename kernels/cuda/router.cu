// Router kernels: a warp per token with the token's selection keys in shared memory. Groups
// are ranked by counting (rank = groups with a larger max, or an equal max and a lower index),
// then the top-k are k rounds of warp argmax (value, then lower index) masking each winner.
// With the Switch statistics, each warp walks several tokens adding their scores into its own
// shared row; blocks write partial sums and counts, and the last block to finish (a ticket)
// adds the partials in block order: one launch, the same result run to run.
#include "kernels/cuda/router.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_info.h"

namespace moe::cuda {

namespace {

constexpr int k_max_warps = 4;         // tokens per block, one per warp (no statistics)
constexpr int k_max_sum_warps = 16;    // warps per block that walk tokens (with statistics)
constexpr int k_sum_blocks_per_sm = 2;  // blocks per multiprocessor (with statistics)
// With statistics: at most this many experts, so that the last block's sum of the partial rows
// (2 x blocks x E words from L2) stays a few microseconds; more take the column-sum path.
constexpr int64_t k_max_sum_experts = 256;
constexpr int64_t k_max_smem = 48 * 1024;
constexpr int64_t k_static_smem_floats = 4;  // finish_sums' `last` flag, static shared memory

// Kernel-side copy of the options (32-bit sizes; the launcher checks they fit).
struct Options {
  int tokens_per_block, num_experts, k, num_groups, top_groups;
  bool sigmoid, renormalize, softmax_after_topk;
};

// Where the Switch statistics go: per-block partials [gridDim.x, E], the ticket (zero before the
// launch), the totals score_sums f32[E] and counts i64[E].
struct SumsOut {
  float* partial_sums;
  int* partial_counts;
  unsigned* ticket;
  float* score_sums;
  int64_t* counts;
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

// One token by one warp: logits[row] -> scores, ids, weights of the row. key[E] and group_max[G]
// are the warp's shared scratch; acc[E] (nullptr = none) gets the row's scores added, lane l
// owning the experts j = l mod 32.
__device__ void route_token(const float* logits, const float* bias, float* scores, int32_t* ids, float* weights,
                            int64_t row, const Options& o, float* key, float* group_max, float* acc) {
  const int lane = threadIdx.x % k_warp;
  const int E = o.num_experts, G = o.num_groups, k = o.k;
  const float* lr = logits + row * E;
  float* sr = scores + row * E;
  __syncwarp();  // the previous token's reads of key and group_max are done
  if (o.sigmoid) {
    for (int j = lane; j < E; j += k_warp) {
      const float s = sigmoidf(lr[j]);
      sr[j] = s;
      key[j] = bias ? __fadd_rn(s, bias[j]) : s;  // _rn: never fused, so the key is exactly s + b
      if (acc) acc[j] += s;
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
      if (acc) acc[j] += s;
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

// Shared memory per warp: key[E], group_max[G] (scratch of route_token). A warp per token.
// logits[T,E], bias[E] or nullptr -> scores[T,E], ids[T,k], weights[T,k]
__global__ void router_topk_forward_kernel(const float* logits, const float* bias, float* scores, int32_t* ids,
                                           float* weights, int64_t tokens, Options o) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * o.tokens_per_block + warp;
  if (row >= tokens) return;
  float* key = smem + warp * (o.num_experts + o.num_groups);
  route_token(logits, bias, scores, ids, weights, row, o, key, key + o.num_experts, nullptr);
}

// The block's statistics into its partial row; then the last block adds the partial rows in
// block order, split into `parts` runs of blocks whose sums meet in shared memory.
// acc: the warps' rows (stride per_warp), block_counts[E]: the block's slots per expert.
__device__ void finish_sums(const float* acc, int per_warp, const int* block_counts, const SumsOut& out,
                            const Options& o, float* smem) {
  const int E = o.num_experts, warps = o.tokens_per_block;
  __syncthreads();
  for (int j = threadIdx.x; j < E; j += blockDim.x) {
    float s = 0;
    for (int w = 0; w < warps; ++w) s += acc[w * per_warp + j];
    out.partial_sums[static_cast<int64_t>(blockIdx.x) * E + j] = s;
    out.partial_counts[static_cast<int64_t>(blockIdx.x) * E + j] = block_counts[j];
  }
  __threadfence();  // the partial row is visible to every block before the ticket is taken
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(out.ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // parts * E * 2 words fit the warps' rows (parts <= warps, each row has 2E words or more).
  const int parts = max(1, min(warps, static_cast<int>(blockDim.x) / E));
  const int blocks = static_cast<int>(gridDim.x), run = (blocks + parts - 1) / parts;
  float* part_sums = smem;
  int* part_counts = reinterpret_cast<int*>(smem + parts * E);
  for (int idx = threadIdx.x; idx < parts * E; idx += blockDim.x) {
    const int p = idx / E, j = idx % E;
    float s = 0;
    int c = 0;
#pragma unroll 8
    for (int b = p * run; b < min(blocks, (p + 1) * run); ++b) {
      s += __ldcg(out.partial_sums + static_cast<int64_t>(b) * E + j);
      c += __ldcg(out.partial_counts + static_cast<int64_t>(b) * E + j);
    }
    part_sums[idx] = s;
    part_counts[idx] = c;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < E; j += blockDim.x) {
    float s = 0;
    int64_t c = 0;
    for (int p = 0; p < parts; ++p) {
      s += part_sums[p * E + j];
      c += part_counts[p * E + j];
    }
    out.score_sums[j] = s;
    out.counts[j] = c;
  }
}

// The same routing with the Switch statistics: each warp walks tokens warp, warp + W * gridDim.x,
// ... Shared memory per warp: key[E], group_max[G], acc[E]; then block_counts int[E].
__global__ void __launch_bounds__(k_max_sum_warps * k_warp, k_sum_blocks_per_sm)
router_topk_forward_sums_kernel(const float* logits, const float* bias, float* scores, int32_t* ids,
                                                float* weights, int64_t tokens, Options o, SumsOut out) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int E = o.num_experts, per_warp = 2 * E + o.num_groups;
  float* key = smem + warp * per_warp;
  float* acc = key + E + o.num_groups;
  int* block_counts = reinterpret_cast<int*>(smem + o.tokens_per_block * per_warp);
  for (int j = lane; j < E; j += k_warp) acc[j] = 0;
  for (int j = threadIdx.x; j < E; j += blockDim.x) block_counts[j] = 0;
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * o.tokens_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * o.tokens_per_block + warp; row < tokens; row += stride) {
    route_token(logits, bias, scores, ids, weights, row, o, key, key + E, acc);
    const int32_t* row_ids = ids + row * o.k;
    for (int r = lane; r < o.k; r += k_warp) {  // this lane's own id writes
      if (row_ids[r] >= 0 && row_ids[r] < E) atomicAdd(&block_counts[row_ids[r]], 1);
    }
  }
  finish_sums(smem + E + o.num_groups, per_warp, block_counts, out, o, smem);
}

// Shared memory per warp: dp[E], the gradient on the scores.
// logits, scores[T,E], ids, weights, dweights[T,k], dscores[T,E] or nullptr, dscore_row[E] or
// nullptr -> dlogits[T,E]
__global__ void router_topk_backward_kernel(const float* logits, const float* scores, const int32_t* ids,
                                            const float* weights, const float* dweights, const float* dscores,
                                            const float* dscore_row, float* dlogits, int64_t tokens, Options o) {
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
  for (int j = lane; j < E; j += k_warp)
    dp[j] = (dscores ? dscores[row * E + j] : 0.0f) + (dscore_row ? dscore_row[j] : 0.0f);
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

// Warps per block: at most max_warps, each with floats_per_warp floats of shared memory, beside
// block_floats for the block; all within 48 KB.
Options options_of(const kernels::TopKOptions& r, int64_t tokens, int64_t num_experts, int64_t floats_per_warp,
                   int64_t block_floats, int max_warps) {
  MOE_CHECK(tokens >= 0 && r.k >= 1 && r.k <= num_experts, "router: bad shape (tokens ", tokens, ", experts ",
            num_experts, ", k ", r.k, ")");
  MOE_CHECK((floats_per_warp + block_floats) * 4 <= k_max_smem, "router: ", num_experts, " experts and ",
            r.num_groups, " groups exceed the supported maximum of ", k_max_smem / 4, " together");
  Options o;
  const int64_t warps = (k_max_smem / 4 - block_floats) / floats_per_warp;
  o.tokens_per_block = static_cast<int>(warps < max_warps ? warps : max_warps);
  o.num_experts = static_cast<int>(num_experts);
  o.k = static_cast<int>(r.k);
  o.num_groups = static_cast<int>(r.num_groups);
  o.top_groups = static_cast<int>(r.top_groups);
  o.sigmoid = r.score == kernels::ScoreFunction::sigmoid;
  o.renormalize = r.renormalize;
  o.softmax_after_topk = r.softmax_after_topk;
  return o;
}

void check_groups(int64_t num_experts, const kernels::TopKOptions& r) {
  MOE_CHECK(r.num_groups == 0 || (r.num_groups > 0 && num_experts % r.num_groups == 0 && r.top_groups >= 1 &&
                                  r.top_groups <= r.num_groups && r.k <= r.top_groups * (num_experts / r.num_groups)),
            "router: bad groups (experts ", num_experts, ", groups ", r.num_groups, ", top ", r.top_groups, ", k ",
            r.k, ")");
}

// With the statistics: key, group_max and acc per warp; the block's counts.
int64_t sums_floats_per_warp(int64_t num_experts, int64_t num_groups) { return 2 * num_experts + num_groups; }

void forward_with_sums(const float* logits, const float* bias, float* scores, int32_t* ids, float* weights,
                       int64_t tokens, int64_t num_experts, const kernels::TopKOptions& r, float* score_sums,
                       int64_t* counts, cudaStream_t stream) {
  MOE_CHECK(tokens <= INT32_MAX / r.k, "router: ", tokens, " tokens x ", r.k,
            " slots overflow the statistics' 32-bit counts");
  const int64_t per_warp = sums_floats_per_warp(num_experts, r.num_groups);
  const Options o =
      options_of(r, tokens, num_experts, per_warp, num_experts + k_static_smem_floats, k_max_sum_warps);
  if (tokens == 0) {
    CUDA_CHECK(cudaMemsetAsync(score_sums, 0, static_cast<size_t>(num_experts) * sizeof(float), stream));
    CUDA_CHECK(cudaMemsetAsync(counts, 0, static_cast<size_t>(num_experts) * sizeof(int64_t), stream));
    return;
  }
  const int64_t blocks = std::min<int64_t>(ceil_div(tokens, o.tokens_per_block),
                                           int64_t{k_sum_blocks_per_sm} * multiprocessor_count());
  // One allocation: the ticket (16 bytes, so the partials stay aligned), then the partial rows.
  const size_t partial_bytes = static_cast<size_t>(blocks * num_experts) * 4;
  Scratch scratch(16 + 2 * partial_bytes, stream);
  char* base = scratch.as<char>();
  SumsOut out{reinterpret_cast<float*>(base + 16), reinterpret_cast<int*>(base + 16 + partial_bytes),
              reinterpret_cast<unsigned*>(base), score_sums, counts};
  CUDA_CHECK(cudaMemsetAsync(out.ticket, 0, sizeof(unsigned), stream));
  const size_t smem = static_cast<size_t>(o.tokens_per_block * per_warp + num_experts) * sizeof(float);
  router_topk_forward_sums_kernel<<<static_cast<unsigned>(blocks), o.tokens_per_block * k_warp, smem, stream>>>(
      logits, bias, scores, ids, weights, tokens, o, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool router_sums_fused(int64_t num_experts, int64_t num_groups) {
  return num_experts <= k_max_sum_experts &&
         (sums_floats_per_warp(num_experts, num_groups) + num_experts + k_static_smem_floats) * 4 <= k_max_smem;
}

void router_topk_forward(const float* logits, const float* bias, float* scores, int32_t* ids, float* weights,
                         int64_t tokens, int64_t num_experts, const kernels::TopKOptions& r, cudaStream_t stream,
                         float* score_sums, int64_t* counts) {
  check_groups(num_experts, r);
  MOE_CHECK((score_sums == nullptr) == (counts == nullptr), "router: score_sums and counts come together");
  if (score_sums != nullptr) {
    MOE_CHECK(router_sums_fused(num_experts, r.num_groups), "router: the statistics of ", num_experts,
              " experts are not made in the routing pass (router_sums_fused)");
    forward_with_sums(logits, bias, scores, ids, weights, tokens, num_experts, r, score_sums, counts, stream);
    return;
  }
  const int64_t per_warp = num_experts + r.num_groups;
  const Options o = options_of(r, tokens, num_experts, per_warp, 0, k_max_warps);
  if (tokens == 0) return;
  const size_t smem = static_cast<size_t>(o.tokens_per_block) * per_warp * sizeof(float);
  router_topk_forward_kernel<<<static_cast<unsigned>(ceil_div(tokens, o.tokens_per_block)),
                               o.tokens_per_block * k_warp, smem, stream>>>(logits, bias, scores, ids, weights,
                                                                            tokens, o);
  CUDA_CHECK_LAUNCH();
}

void router_topk_backward(const float* logits, const float* scores, const int32_t* ids, const float* weights,
                          const float* dweights, const float* dscores, const float* dscore_row, float* dlogits,
                          int64_t tokens, int64_t num_experts, const kernels::TopKOptions& r, cudaStream_t stream) {
  const Options o = options_of(r, tokens, num_experts, num_experts, 0, k_max_warps);
  if (tokens == 0) return;
  const size_t smem = static_cast<size_t>(o.tokens_per_block) * num_experts * sizeof(float);
  router_topk_backward_kernel<<<static_cast<unsigned>(ceil_div(tokens, o.tokens_per_block)),
                                o.tokens_per_block * k_warp, smem, stream>>>(logits, scores, ids, weights, dweights,
                                                                             dscores, dscore_row, dlogits, tokens, o);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

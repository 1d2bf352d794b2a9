// Expert sort by counting: per-chunk histograms, one scan block turning them into per-chunk
// offsets, then a stable in-order placement (warp match + rank); combine forward/backward.
// Dropped slots (id -1) are skipped everywhere; unused rows of dy_sorted are zeroed by a
// second pass over per-row "used" flags, so any slot_pos layout (prefix or padded) works.
#include "kernels/cuda/permute.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/runtime.h"

namespace moe::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int k_chunk = 1024;         // slots per chunk (one count block, one place block)
constexpr int k_count_threads = 256;
constexpr int k_scan_threads = 1024;

// ids[n] for n in chunk b -> chunk_counts[b, e]; -1 is skipped, a bad id is recorded in *bad
// as (1 << 32) | id.
__global__ void count_kernel(const int32_t* ids, int64_t num_slots, int num_experts, int32_t* chunk_counts,
                             unsigned long long* bad) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * k_chunk;
  const int64_t end = begin + k_chunk < num_slots ? begin + k_chunk : num_slots;
  for (int64_t n = begin + threadIdx.x; n < end; n += blockDim.x) {
    const int32_t e = ids[n];
    if (e >= 0 && e < num_experts) {
      atomicAdd(&hist[e], 1);
    } else if (e != -1) {
      *bad = (1ull << 32) | static_cast<uint32_t>(e);  // any one offender will do
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    chunk_counts[static_cast<int64_t>(blockIdx.x) * num_experts + e] = hist[e];
  }
}

// One block. chunk_counts[chunks, E] -> (in place) chunk offsets: the sorted row where chunk b's
// first slot of expert e goes; offsets[E+1] = where each expert's rows begin (offsets[E] = rows used).
__global__ void scan_kernel(int32_t* chunk_counts, int64_t chunks, int num_experts, int32_t* offsets) {
  extern __shared__ int32_t offset[];  // [E]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int32_t total = 0;
    for (int64_t b = 0; b < chunks; ++b) total += chunk_counts[b * num_experts + e];
    offset[e] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive scan over experts (E is small: serial is fine)
    int32_t run = 0;
    for (int e = 0; e < num_experts; ++e) {
      const int32_t v = offset[e];
      offset[e] = run;
      offsets[e] = run;
      run += v;
    }
    offsets[num_experts] = run;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int32_t run = offset[e];
    for (int64_t b = 0; b < chunks; ++b) {
      const int32_t v = chunk_counts[b * num_experts + e];
      chunk_counts[b * num_experts + e] = run;
      run += v;
    }
  }
}

// One warp per chunk, walking it in order 32 slots at a time: a slot's row is its chunk's
// cursor for its expert plus the number of lower lanes with the same expert (stable).
__global__ void place_kernel(const int32_t* ids, int64_t num_slots, int k, int num_experts,
                             const int32_t* chunk_offsets, int32_t* sorted_tokens, int32_t* slot_pos) {
  extern __shared__ int32_t cursor[];  // [E]
  const int lane = threadIdx.x;
  for (int e = lane; e < num_experts; e += k_warp) {
    cursor[e] = chunk_offsets[static_cast<int64_t>(blockIdx.x) * num_experts + e];
  }
  __syncwarp();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * k_chunk;
  const int64_t end = begin + k_chunk < num_slots ? begin + k_chunk : num_slots;
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += k_warp) {
    const int64_t n = base + lane;
    int32_t e = n < end ? ids[n] : -1;
    if (e < 0 || e >= num_experts) e = -1;  // dropped, past the end, or bad (reported by count_kernel)
    const unsigned same = __match_any_sync(k_full_mask, e);
    int32_t next = 0;
    if (e >= 0) {
      const int32_t pos = cursor[e] + __popc(same & lower_lanes);
      sorted_tokens[pos] = static_cast<int32_t>(n / k);
      slot_pos[n] = pos;
      next = cursor[e] + __popc(same);
    } else if (n < end) {
      slot_pos[n] = -1;
    }
    __syncwarp();
    if (e >= 0 && lane == __ffs(same) - 1) cursor[e] = next;
    __syncwarp();
  }
}

// out[t, c..c+N) = sum_s w[t,s] * y_sorted[slot_pos[t*k+s], c..c+N) over slots with a row
template <int N>
__global__ void combine_forward_kernel(const bf16* y_sorted, const int32_t* slot_pos, const float* weights, bf16* out,
                                       int64_t tokens, int k, int64_t dim) {
  const int64_t per_row = dim / N;
  const int64_t total = tokens * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    float acc[N] = {};
    for (int s = 0; s < k; ++s) {
      const int64_t row = slot_pos[t * k + s];
      if (row < 0) continue;
      const float w = weights != nullptr ? weights[t * k + s] : 1.0f;
      float v[N];
      load_n<N>(y_sorted + row * dim + c, v);
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] += w * v[i];
    }
    store_n<N>(out + t * dim + c, acc);
  }
}

// Warp per slot n = t*k + s: dy_sorted[slot_pos[n]] = w * dout[t]; dweights[n] = <dout[t], y>;
// used[row] = 1 for the rows written. A slot without a row (slot_pos -1) gets dweights 0.
template <int N>
__global__ void combine_backward_kernel(const bf16* y_sorted, const int32_t* slot_pos, const float* weights,
                                        const bf16* dout, bf16* dy_sorted, float* dweights, uint8_t* used,
                                        int64_t num_slots, int k, int64_t dim) {
  const int lane = threadIdx.x % k_warp;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (n >= num_slots) return;
  const int64_t t = n / k, row = slot_pos[n];
  if (row < 0) {  // warp-uniform
    if (lane == 0) dweights[n] = 0.0f;
    return;
  }
  if (lane == 0) used[row] = 1;
  const float w = weights[n];
  float dot = 0;
  for (int64_t c = static_cast<int64_t>(lane) * N; c < dim; c += k_warp * N) {
    float d[N], y[N];
    load_n<N>(dout + t * dim + c, d);
    load_n<N>(y_sorted + row * dim + c, y);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      dot += d[i] * y[i];
      d[i] *= w;
    }
    store_n<N>(dy_sorted + row * dim + c, d);
  }
  dot = warp_sum(dot);
  if (lane == 0) dweights[n] = dot;
}

// Warp per slot n = t*k + s: dy_sorted[slot_pos[n]] = dout[t], row_weights[that row] = weights[n],
// used[row] = 1. A slot without a row (slot_pos -1) writes nothing.
template <int N>
__global__ void combine_backward_unweighted_kernel(const int32_t* slot_pos, const float* weights, const bf16* dout,
                                                   bf16* dy_sorted, float* row_weights, uint8_t* used,
                                                   int64_t num_slots, int k, int64_t dim) {
  const int lane = threadIdx.x % k_warp;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (n >= num_slots) return;
  const int64_t t = n / k, row = slot_pos[n];
  if (row < 0) return;  // warp-uniform
  if (lane == 0) {
    used[row] = 1;
    row_weights[row] = weights[n];
  }
  for (int64_t c = static_cast<int64_t>(lane) * N; c < dim; c += k_warp * N) {
    float d[N];
    load_n<N>(dout + t * dim + c, d);
    store_n<N>(dy_sorted + row * dim + c, d);
  }
}

// slot_values[n] = row_values[slot_pos[n]], 0 for a slot without a row
__global__ void gather_slots_kernel(const float* row_values, const int32_t* slot_pos, float* slot_values,
                                    int64_t num_slots) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < num_slots; n += stride) {
    const int32_t row = slot_pos[n];
    slot_values[n] = row >= 0 ? row_values[row] : 0.0f;
  }
}

// dy_sorted[N, dim]: rows with used[row] = 0 set to zero (the rows no slot wrote), and so is
// row_values[row] when given
template <int N>
__global__ void zero_unused_rows_kernel(bf16* dy_sorted, float* row_values, const uint8_t* used, int64_t num_rows,
                                        int64_t dim) {
  const int64_t per_row = dim / N, total = num_rows * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float zeros[N] = {};
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t row = g / per_row, chunk = g - row * per_row;
    if (used[row]) continue;
    store_n<N>(dy_sorted + row * dim + chunk * N, zeros);
    if (row_values != nullptr && chunk == 0) row_values[row] = 0.0f;
  }
}

}  // namespace

namespace {

// Launches the sort; bad ids (outside [-1, E)) take no row and are reported in *bad.
void launch_sort(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                 int32_t* slot_pos, int32_t* offsets, unsigned long long* bad, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && num_experts >= 1, "moe_sort_by_expert: bad shape (tokens ", tokens, ", k ", k,
            ", experts ", num_experts, ")");
  const int64_t num_slots = tokens * k;
  MOE_CHECK(num_slots <= INT32_MAX, "moe_sort_by_expert: ", num_slots, " slots exceed i32 row indices");
  MOE_CHECK(num_experts * 4 <= 48 * 1024, "moe_sort_by_expert: at most 12288 experts, got ", num_experts);
  const int E = static_cast<int>(num_experts);
  const int64_t chunks = std::max<int64_t>(ceil_div(num_slots, k_chunk), 1);
  Scratch scratch(static_cast<size_t>(chunks * E) * sizeof(int32_t), stream);
  auto* chunk_counts = scratch.as<int32_t>();
  CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(*bad), stream));
  // Rows past the used ones (dropped slots) keep token -1.
  if (num_slots > 0) CUDA_CHECK(cudaMemsetAsync(sorted_tokens, 0xff, static_cast<size_t>(num_slots) * 4, stream));
  const size_t smem = static_cast<size_t>(E) * sizeof(int32_t);
  count_kernel<<<static_cast<unsigned>(chunks), k_count_threads, smem, stream>>>(ids, num_slots, E, chunk_counts,
                                                                                 bad);
  CUDA_CHECK_LAUNCH();
  scan_kernel<<<1, k_scan_threads, smem, stream>>>(chunk_counts, chunks, E, offsets);
  CUDA_CHECK_LAUNCH();
  if (num_slots > 0) {
    place_kernel<<<static_cast<unsigned>(chunks), k_warp, smem, stream>>>(ids, num_slots, static_cast<int>(k), E,
                                                                          chunk_counts, sorted_tokens, slot_pos);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int32_t* offsets, cudaStream_t stream) {
  Scratch bad(sizeof(unsigned long long), stream);
  launch_sort(ids, tokens, k, num_experts, sorted_tokens, slot_pos, offsets, bad.as<unsigned long long>(), stream);
}

void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* host_counts, cudaStream_t stream) {
  // offsets[E+1] then the bad-id word, read back in one copy.
  const size_t offsets_bytes = (static_cast<size_t>(num_experts + 1) * 4 + 7) / 8 * 8;
  Scratch scratch(offsets_bytes + 8, stream);
  auto* offsets = scratch.as<int32_t>();
  auto* bad = reinterpret_cast<unsigned long long*>(scratch.as<char>() + offsets_bytes);
  launch_sort(ids, tokens, k, num_experts, sorted_tokens, slot_pos, offsets, bad, stream);
  std::vector<char> host(offsets_bytes + 8);
  CUDA_CHECK(cudaMemcpyAsync(host.data(), scratch.as<char>(), host.size(), cudaMemcpyDeviceToHost, stream));
  wait_stream(stream);
  unsigned long long flag = 0;
  std::memcpy(&flag, host.data() + offsets_bytes, 8);
  MOE_CHECK(flag == 0, "moe_sort_by_expert: expert id ", static_cast<int32_t>(flag & 0xffffffffull),
            " outside [0, ", num_experts, ")");
  const auto* ends = reinterpret_cast<const int32_t*>(host.data());
  for (int64_t e = 0; e < num_experts; ++e) host_counts[e] = ends[e + 1] - ends[e];
}

void moe_combine_forward(const bf16* y_sorted, const int32_t* slot_pos, const float* weights, bf16* out,
                         int64_t tokens, int64_t k, int64_t dim, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && dim >= 0 && k <= INT_MAX, "moe_combine_forward: bad shape");
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  if (dim % 8 == 0 && aligned_to(y_sorted, 16) && aligned_to(out, 16)) {
    combine_forward_kernel<8><<<grid_for(tokens * dim / 8, threads), threads, 0, stream>>>(
        y_sorted, slot_pos, weights, out, tokens, static_cast<int>(k), dim);
  } else {
    combine_forward_kernel<1><<<grid_for(tokens * dim, threads), threads, 0, stream>>>(
        y_sorted, slot_pos, weights, out, tokens, static_cast<int>(k), dim);
  }
  CUDA_CHECK_LAUNCH();
}

void moe_combine_backward(const bf16* y_sorted, const int32_t* slot_pos, const float* weights, const bf16* dout,
                          bf16* dy_sorted, float* dweights, int64_t tokens, int64_t k, int64_t dim, int64_t num_rows,
                          cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && dim >= 0 && num_rows >= 0 && k <= INT_MAX, "moe_combine_backward: bad shape");
  const int64_t num_slots = tokens * k;
  if (num_rows == 0 && num_slots == 0) return;
  Scratch used(static_cast<size_t>(num_rows), stream);
  if (num_rows > 0) CUDA_CHECK(cudaMemsetAsync(used.as<uint8_t>(), 0, static_cast<size_t>(num_rows), stream));
  const bool vec = dim % 8 == 0 && aligned_to(y_sorted, 16) && aligned_to(dout, 16) && aligned_to(dy_sorted, 16);
  if (num_slots > 0) {
    constexpr int warps = 8;
    const unsigned blocks = static_cast<unsigned>(ceil_div(num_slots, warps));
    if (vec) {
      combine_backward_kernel<8><<<blocks, warps * k_warp, 0, stream>>>(
          y_sorted, slot_pos, weights, dout, dy_sorted, dweights, used.as<uint8_t>(), num_slots, static_cast<int>(k),
          dim);
    } else {
      combine_backward_kernel<1><<<blocks, warps * k_warp, 0, stream>>>(
          y_sorted, slot_pos, weights, dout, dy_sorted, dweights, used.as<uint8_t>(), num_slots, static_cast<int>(k),
          dim);
    }
    CUDA_CHECK_LAUNCH();
  }
  if (num_rows > 0 && dim > 0) {
    constexpr int threads = 256;
    if (vec) {
      zero_unused_rows_kernel<8><<<grid_for(num_rows * dim / 8, threads), threads, 0, stream>>>(
          dy_sorted, nullptr, used.as<uint8_t>(), num_rows, dim);
    } else {
      zero_unused_rows_kernel<1><<<grid_for(num_rows * dim, threads), threads, 0, stream>>>(
          dy_sorted, nullptr, used.as<uint8_t>(), num_rows, dim);
    }
    CUDA_CHECK_LAUNCH();
  }
}

void moe_combine_backward_unweighted(const int32_t* slot_pos, const float* weights, const bf16* dout, bf16* dy_sorted,
                                     float* row_weights, int64_t tokens, int64_t k, int64_t dim, int64_t num_rows,
                                     cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && dim >= 1 && num_rows >= 0 && k <= INT_MAX,
            "moe_combine_backward_unweighted: bad shape");
  const int64_t num_slots = tokens * k;
  if (num_rows == 0) return;
  Scratch used(static_cast<size_t>(num_rows), stream);
  CUDA_CHECK(cudaMemsetAsync(used.as<uint8_t>(), 0, static_cast<size_t>(num_rows), stream));
  const bool vec = dim % 8 == 0 && aligned_to(dout, 16) && aligned_to(dy_sorted, 16);
  if (num_slots > 0) {
    constexpr int warps = 8;
    const auto blocks = static_cast<unsigned>(ceil_div(num_slots, warps));
    if (vec) {
      combine_backward_unweighted_kernel<8><<<blocks, warps * k_warp, 0, stream>>>(
          slot_pos, weights, dout, dy_sorted, row_weights, used.as<uint8_t>(), num_slots, static_cast<int>(k), dim);
    } else {
      combine_backward_unweighted_kernel<1><<<blocks, warps * k_warp, 0, stream>>>(
          slot_pos, weights, dout, dy_sorted, row_weights, used.as<uint8_t>(), num_slots, static_cast<int>(k), dim);
    }
    CUDA_CHECK_LAUNCH();
  }
  constexpr int threads = 256;
  if (vec) {
    zero_unused_rows_kernel<8><<<grid_for(num_rows * dim / 8, threads), threads, 0, stream>>>(
        dy_sorted, row_weights, used.as<uint8_t>(), num_rows, dim);
  } else {
    zero_unused_rows_kernel<1><<<grid_for(num_rows * dim, threads), threads, 0, stream>>>(
        dy_sorted, row_weights, used.as<uint8_t>(), num_rows, dim);
  }
  CUDA_CHECK_LAUNCH();
}

void moe_gather_slots(const float* row_values, const int32_t* slot_pos, float* slot_values, int64_t num_slots,
                      cudaStream_t stream) {
  MOE_CHECK(num_slots >= 0, "moe_gather_slots: negative slot count");
  if (num_slots == 0) return;
  constexpr int threads = 256;
  gather_slots_kernel<<<grid_for(num_slots, threads), threads, 0, stream>>>(row_values, slot_pos, slot_values,
                                                                           num_slots);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

// Expert sort by counting: per-chunk histograms, one scan block turning them into per-chunk
// offsets, then a stable in-order placement (warp match + rank) that can move the rows too (the
// dispatch's permutation and gather in one pass); the rows moved again by token from the saved slot
// rows (the backward's redispatch, the unweighted combine backward: each row read once, written to
// its k rows); combine forward/backward.
// Dropped slots (id -1) are skipped everywhere; rows no slot wrote are zeroed by a second pass over
// per-row "used" flags, so any slot_pos layout (prefix or padded) works.
#include "kernels/cuda/permute.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/runtime.h"

namespace moe::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int k_chunk = 256;  // slots per chunk (one count block, one place block): hundreds of blocks at MoE sizes
constexpr int k_count_threads = 256;
constexpr int k_scan_threads = 1024;
constexpr int k_place_threads = 256;  // warp 0 places the chunk, all warps move its rows
constexpr int64_t k_max_splits = 8;   // place blocks per chunk at most (each redoes the placement)
// Shared memory per place block: a cursor per expert (dynamic) and the chunk's rows (static).
constexpr int64_t k_max_experts = (48 * 1024 - k_chunk * static_cast<int64_t>(sizeof(int32_t))) / 4;

// ids[n] for n in chunk b -> chunk_counts[e, b] (expert-major, so the scan reads along chunks);
// -1 is skipped, a bad id is recorded in *bad as (1 << 32) | id.
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
    chunk_counts[static_cast<int64_t>(e) * gridDim.x + blockIdx.x] = hist[e];
  }
}

// One block, a warp per expert. chunk_counts[E, chunks] -> (in place) chunk offsets: the sorted
// row where chunk b's first slot of expert e goes; offsets[E+1] = where each expert's rows begin
// (offsets[E] = rows used). Chunks are scanned 32 at a time (a warp scan), not one by one.
__global__ void scan_kernel(int32_t* chunk_counts, int64_t chunks, int num_experts, int32_t* offsets) {
  extern __shared__ int32_t offset[];  // [E]
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp, num_warps = blockDim.x / k_warp;
  for (int e = warp; e < num_experts; e += num_warps) {
    const int32_t* counts = chunk_counts + static_cast<int64_t>(e) * chunks;
    int32_t total = 0;
    for (int64_t b = lane; b < chunks; b += k_warp) total += counts[b];
    total = warp_sum(total);
    if (lane == 0) offset[e] = total;
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
  for (int e = warp; e < num_experts; e += num_warps) {
    int32_t* counts = chunk_counts + static_cast<int64_t>(e) * chunks;
    int32_t run = offset[e];
    for (int64_t base = 0; base < chunks; base += k_warp) {  // warp-uniform
      const int64_t b = base + lane;
      const int32_t v = b < chunks ? counts[b] : 0;
      const int32_t inclusive = warp_inclusive_sum(v, lane);
      if (b < chunks) counts[b] = run + inclusive - v;
      run += __shfl_sync(k_full_mask, inclusive, k_warp - 1);
    }
  }
}

// A warp copies one row of `words` W-words: four loads in flight per lane before their stores
// (the row of MoE-small, 768 bf16 = 96 16-byte words, is one round of three).
template <typename W>
__device__ __forceinline__ void copy_row(const W* __restrict__ src, W* __restrict__ dst, int64_t words, int lane) {
  constexpr int k_batch = 4;
  for (int64_t base = lane; base < words; base += k_batch * k_warp) {
    W v[k_batch];
#pragma unroll
    for (int j = 0; j < k_batch; ++j) {
      if (base + j * k_warp < words) v[j] = src[base + j * k_warp];
    }
#pragma unroll
    for (int j = 0; j < k_batch; ++j) {
      if (base + j * k_warp < words) dst[base + j * k_warp] = v[j];
    }
  }
}

// Blocks (chunk blockIdx.x, split blockIdx.y) of k_place_threads threads. Each stages its chunk's
// ids in shared memory and warp 0 walks them in order 32 at a time: a slot's row is its chunk's
// cursor for its expert plus the number of lower lanes with the same expert (stable: by expert,
// then token, then slot). After a barrier split 0 writes slot_pos and sorted_tokens and, when there
// are rows to move (x != nullptr), the chunk's gridDim.y splits share its rows, a row per warp in
// W-wide words (x[token] to x_sorted[row]), and the padding rows [offsets[E], num_rows) chunk b
// zeroes (what a gather of token -1 gives). Splits redo the cheap placement to add copying warps
// where there are few chunks (top-1, small batches) without changing the chunk size.
template <typename W>
__global__ void __launch_bounds__(k_place_threads)
    place_kernel(const int32_t* ids, int64_t num_slots, int k, int num_experts, const int32_t* chunk_offsets,
                 const int32_t* offsets, int32_t* sorted_tokens, int32_t* slot_pos, const W* __restrict__ x,
                 int64_t words, W* __restrict__ x_sorted, int64_t num_rows) {
  extern __shared__ int32_t cursor[];  // [E]: the next row of each expert in this chunk
  __shared__ int32_t row_of[k_chunk];  // the chunk's expert ids, then each slot's row (-1: none)
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * k_chunk;
  const int len = static_cast<int>(num_slots - begin < k_chunk ? num_slots - begin : k_chunk);
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    cursor[e] = chunk_offsets[static_cast<int64_t>(e) * gridDim.x + blockIdx.x];
  }
  for (int i = threadIdx.x; i < k_chunk; i += blockDim.x) {
    const int32_t e = i < len ? ids[begin + i] : -1;
    row_of[i] = e >= 0 && e < num_experts ? e : -1;  // dropped, past the end, or bad (count_kernel reports it)
  }
  __syncthreads();
  if (threadIdx.x < k_warp) {
    const int lane = threadIdx.x;
    const unsigned lower_lanes = (1u << lane) - 1u;
    for (int base = 0; base < len; base += k_warp) {  // base + lane < k_chunk: k_chunk is a multiple of 32
      const int32_t e = row_of[base + lane];
      const unsigned same = __match_any_sync(k_full_mask, e);
      int32_t row = -1, next = 0;
      if (e >= 0) {
        row = cursor[e] + __popc(same & lower_lanes);
        next = cursor[e] + __popc(same);
      }
      __syncwarp();  // every lane has read its cursor before the group's leader moves it
      if (e >= 0 && lane == __ffs(same) - 1) cursor[e] = next;
      row_of[base + lane] = row;
      __syncwarp();
    }
  }
  __syncthreads();  // row_of, written by warp 0, is read by every warp below
  if (blockIdx.y == 0) {
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
      const int32_t row = row_of[i];
      slot_pos[begin + i] = row;
      if (row >= 0) sorted_tokens[row] = static_cast<int32_t>((begin + i) / k);
    }
  }
  if (x == nullptr) return;
  const int lane = threadIdx.x % k_warp;
  // This block's warps among the chunk's gridDim.y * (blockDim.x / 32) copying warps.
  const int warp = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x) / k_warp;
  const int num_warps = static_cast<int>(gridDim.y * blockDim.x) / k_warp;
  for (int i = warp; i < len; i += num_warps) {
    const int64_t row = row_of[i];
    if (row < 0 || row >= num_rows) continue;  // warp-uniform; rows past num_rows are not kept
    copy_row(x + (begin + i) / k * words, x_sorted + row * words, words, lane);
  }
  // Chunk b zeroes padding rows [used + b*k_chunk, used + (b+1)*k_chunk): there are at most
  // num_slots - used of them, so the chunks cover them all.
  const W zero{};
  const int64_t pad_begin = offsets[num_experts] + begin;
  const int64_t pad_end = pad_begin + k_chunk < num_rows ? pad_begin + k_chunk : num_rows;
  for (int64_t row = pad_begin + warp; row < pad_end; row += num_warps) {
#pragma unroll 4
    for (int64_t w = lane; w < words; w += k_warp) x_sorted[row * words + w] = zero;
  }
}

// out[t, c..c+N) = add_a + add_b (each nullptr = none) + sum_s w[t,s] * y_sorted[slot_pos[t*k+s],
// c..c+N) over slots with a row; each element is read before it is written, so out may be an addend.
template <int N>
__global__ void combine_forward_kernel(const bf16* y_sorted, const int32_t* slot_pos, const float* weights, bf16* out,
                                       int64_t tokens, int k, int64_t dim, const bf16* add_a, const bf16* add_b) {
  const int64_t per_row = dim / N;
  const int64_t total = tokens * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    float acc[N] = {};
    const bf16* adds[2] = {add_a, add_b};
#pragma unroll
    for (int a = 0; a < 2; ++a) {
      if (adds[a] == nullptr) continue;
      float v[N];
      load_n<N>(adds[a] + t * dim + c, v);
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] += v[i];
    }
#pragma unroll 4  // no store inside: the slots' loads go out together
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

// Warp per token t: its row of src is read once, k_batch W-words a lane in flight, and stored to
// each of its slots' rows (dst[slot_pos[t*k+s]] = src[t], bits copied: no conversion), used[row] = 1,
// and when row_weights is given row_weights[that row] = weights[t*k+s]. A slot without a row
// (slot_pos -1), or one past dst's num_rows, writes nothing. (A warp per slot read the same row k
// times and moved it through fp32.)
template <typename W>
__global__ void scatter_token_rows_kernel(const int32_t* __restrict__ slot_pos, const float* __restrict__ weights,
                                          const W* __restrict__ src, W* __restrict__ dst,
                                          float* __restrict__ row_weights, uint8_t* __restrict__ used, int64_t tokens,
                                          int k, int64_t words, int64_t num_rows) {
  constexpr int k_batch = 4;
  const int lane = threadIdx.x % k_warp;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (t >= tokens) return;
  const int32_t* slots = slot_pos + t * k;
  for (int s = lane; s < k; s += k_warp) {
    const int32_t row = slots[s];
    if (row < 0 || row >= num_rows) continue;
    used[row] = 1;
    if (row_weights != nullptr) row_weights[row] = weights[t * k + s];
  }
  for (int64_t base = lane; base < words; base += k_batch * k_warp) {
    W v[k_batch];
#pragma unroll
    for (int j = 0; j < k_batch; ++j) {
      if (base + j * k_warp < words) v[j] = src[t * words + base + j * k_warp];
    }
    for (int s = 0; s < k; ++s) {
      const int64_t row = slots[s];
      if (row < 0 || row >= num_rows) continue;  // warp-uniform
#pragma unroll
      for (int j = 0; j < k_batch; ++j) {
        if (base + j * k_warp < words) dst[row * words + base + j * k_warp] = v[j];
      }
    }
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

// rows[N, words]: rows with used[row] = 0 set to zero bits (the rows no slot wrote), and so is
// row_values[row] when given. A warp per row: one flag read where (dropless) every row is used.
template <typename W>
__global__ void zero_unused_rows_kernel(W* rows, float* row_values, const uint8_t* used, int64_t num_rows,
                                        int64_t words) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (row >= num_rows || used[row]) return;  // warp-uniform
  const W zero{};
  for (int64_t w = lane; w < words; w += k_warp) rows[row * words + w] = zero;
  if (row_values != nullptr && lane == 0) row_values[row] = 0.0f;
}

void zero_unused_rows(void* rows, float* row_values, const uint8_t* used, int64_t num_rows, int64_t row_bytes,
                      cudaStream_t stream) {
  if (num_rows == 0) return;
  constexpr int warps = 8;
  const auto blocks = static_cast<unsigned>(ceil_div(num_rows, warps));
  with_row_word(row_bytes, rows, rows, [&](auto word) {
    using W = decltype(word);
    zero_unused_rows_kernel<W><<<blocks, warps * k_warp, 0, stream>>>(
        static_cast<W*>(rows), row_values, used, num_rows, row_bytes / static_cast<int64_t>(sizeof(W)));
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace {

// The rows the placement moves, x[tokens, row_bytes] -> x_sorted[num_rows, row_bytes]; none when
// x is null.
struct RowMove {
  const void* x = nullptr;
  int64_t row_bytes = 0;
  void* x_sorted = nullptr;
  int64_t num_rows = 0;
};

// Launches the sort (and the row move); bad ids (outside [-1, E)) take no row and are reported in *bad.
void launch_sort(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                 int32_t* slot_pos, int32_t* offsets, unsigned long long* bad, const RowMove& move,
                 cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && num_experts >= 1, "moe_sort_by_expert: bad shape (tokens ", tokens, ", k ", k,
            ", experts ", num_experts, ")");
  const int64_t num_slots = tokens * k;
  MOE_CHECK(num_slots <= INT32_MAX, "moe_sort_by_expert: ", num_slots, " slots exceed i32 row indices");
  MOE_CHECK(num_experts <= k_max_experts, "moe_sort_by_expert: at most ", k_max_experts, " experts, got ",
            num_experts);
  MOE_CHECK(move.num_rows >= 0 && move.num_rows <= num_slots && move.row_bytes >= 0, "moe_permute_rows: ",
            move.num_rows, " rows of ", move.row_bytes, " bytes for ", num_slots, " slots");
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
  if (num_slots == 0) return;  // and so num_rows == 0
  const int ki = static_cast<int>(k);
  if (move.x == nullptr || move.num_rows == 0 || move.row_bytes == 0) {
    place_kernel<uint4><<<static_cast<unsigned>(chunks), k_place_threads, smem, stream>>>(
        ids, num_slots, ki, E, chunk_counts, offsets, sorted_tokens, slot_pos, nullptr, 0, nullptr, 0);
  } else {
    // Enough blocks to fill every multiprocessor (8 blocks of 256 threads each) when chunks are few.
    const int64_t want = static_cast<int64_t>(multiprocessor_count()) * (2048 / k_place_threads);
    const int64_t splits = std::clamp<int64_t>(ceil_div(want, chunks), 1, k_max_splits);
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(splits));
    with_row_word(move.row_bytes, move.x, move.x_sorted, [&](auto word) {
      using W = decltype(word);
      place_kernel<W><<<grid, k_place_threads, smem, stream>>>(
          ids, num_slots, ki, E, chunk_counts, offsets, sorted_tokens, slot_pos, static_cast<const W*>(move.x),
          move.row_bytes / static_cast<int64_t>(sizeof(W)), static_cast<W*>(move.x_sorted), move.num_rows);
    });
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int32_t* offsets, cudaStream_t stream) {
  Scratch bad(sizeof(unsigned long long), stream);
  launch_sort(ids, tokens, k, num_experts, sorted_tokens, slot_pos, offsets, bad.as<unsigned long long>(), RowMove{},
              stream);
}

void moe_permute_rows(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, const void* x,
                      int64_t row_bytes, int32_t* sorted_tokens, int32_t* slot_pos, int32_t* offsets, void* x_sorted,
                      int64_t num_rows, cudaStream_t stream) {
  Scratch bad(sizeof(unsigned long long), stream);
  launch_sort(ids, tokens, k, num_experts, sorted_tokens, slot_pos, offsets, bad.as<unsigned long long>(),
              RowMove{x, row_bytes, x_sorted, num_rows}, stream);
}

void moe_sort_by_expert(const int32_t* ids, int64_t tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* host_counts, cudaStream_t stream) {
  // offsets[E+1] then the bad-id word, read back in one copy.
  const size_t offsets_bytes = (static_cast<size_t>(num_experts + 1) * 4 + 7) / 8 * 8;
  Scratch scratch(offsets_bytes + 8, stream);
  auto* offsets = scratch.as<int32_t>();
  auto* bad = reinterpret_cast<unsigned long long*>(scratch.as<char>() + offsets_bytes);
  launch_sort(ids, tokens, k, num_experts, sorted_tokens, slot_pos, offsets, bad, RowMove{}, stream);
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
                         int64_t tokens, int64_t k, int64_t dim, cudaStream_t stream, const bf16* add_a,
                         const bf16* add_b) {
  MOE_CHECK(tokens >= 0 && k >= 1 && dim >= 0 && k <= INT_MAX, "moe_combine_forward: bad shape");
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  auto aligned = [](const bf16* p) { return p == nullptr || aligned_to(p, 16); };
  if (dim % 8 == 0 && aligned(y_sorted) && aligned(out) && aligned(add_a) && aligned(add_b)) {
    combine_forward_kernel<8><<<grid_for(tokens * dim / 8, threads), threads, 0, stream>>>(
        y_sorted, slot_pos, weights, out, tokens, static_cast<int>(k), dim, add_a, add_b);
  } else {
    combine_forward_kernel<1><<<grid_for(tokens * dim, threads), threads, 0, stream>>>(
        y_sorted, slot_pos, weights, out, tokens, static_cast<int>(k), dim, add_a, add_b);
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
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(bf16));
  if (dim > 0) zero_unused_rows(dy_sorted, nullptr, used.as<uint8_t>(), num_rows, row_bytes, stream);
}

namespace {

// The scatter of token rows (scatter_token_rows_kernel) then the zeroing of the rows it did not write.
void scatter_token_rows(const int32_t* slot_pos, const float* weights, const void* src, void* dst, float* row_weights,
                        int64_t tokens, int64_t k, int64_t row_bytes, int64_t num_rows, cudaStream_t stream) {
  if (num_rows == 0) return;
  Scratch used(static_cast<size_t>(num_rows), stream);
  CUDA_CHECK(cudaMemsetAsync(used.as<uint8_t>(), 0, static_cast<size_t>(num_rows), stream));
  if (tokens > 0) {
    constexpr int warps = 8;
    const auto blocks = static_cast<unsigned>(ceil_div(tokens, warps));
    with_row_word(row_bytes, src, dst, [&](auto word) {
      using W = decltype(word);
      scatter_token_rows_kernel<W><<<blocks, warps * k_warp, 0, stream>>>(
          slot_pos, weights, static_cast<const W*>(src), static_cast<W*>(dst), row_weights, used.as<uint8_t>(),
          tokens, static_cast<int>(k), row_bytes / static_cast<int64_t>(sizeof(W)), num_rows);
    });
    CUDA_CHECK_LAUNCH();
  }
  zero_unused_rows(dst, row_weights, used.as<uint8_t>(), num_rows, row_bytes, stream);
}

}  // namespace

void moe_combine_backward_unweighted(const int32_t* slot_pos, const float* weights, const bf16* dout, bf16* dy_sorted,
                                     float* row_weights, int64_t tokens, int64_t k, int64_t dim, int64_t num_rows,
                                     cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && dim >= 1 && num_rows >= 0 && k <= INT_MAX,
            "moe_combine_backward_unweighted: bad shape");
  scatter_token_rows(slot_pos, weights, dout, dy_sorted, row_weights, tokens, k,
                     dim * static_cast<int64_t>(sizeof(bf16)), num_rows, stream);
}

void moe_scatter_rows(const void* x, const int32_t* slot_pos, void* x_sorted, int64_t tokens, int64_t k,
                      int64_t row_bytes, int64_t num_rows, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && row_bytes >= 1 && num_rows >= 0 && k <= INT_MAX, "moe_scatter_rows: bad shape");
  scatter_token_rows(slot_pos, nullptr, x, x_sorted, nullptr, tokens, k, row_bytes, num_rows, stream);
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

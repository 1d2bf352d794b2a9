// Gather (word-wide copies, the widest word the row size and alignment allow) and atomic
// scatter-add of rows (thread per element pair).
#include "kernels/cuda/rows.h"

#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

using kernels::FloatType;

namespace {

using bf16 = __nv_bfloat16;

constexpr int k_gather_words = 4;  // copy words per thread: independent loads behind one index load

// index i32[num_index], src[src_rows, words] -> dst[num_index, words]; W is the copy word. A row is
// split into `groups` = ceil(words / k_gather_words) threads; thread `part` copies words part,
// part + groups, ... (up to k_gather_words of them), so that its loads are in flight together behind
// the one index load they depend on, and a warp's loads and stores cover consecutive words (whole
// sectors). A row index of -1 gives zeros, any other outside [0, src_rows) all-ones bits (NaN for
// floats).
template <typename W>
__global__ void gather_rows_kernel(const W* __restrict__ src, int64_t src_rows, const int32_t* __restrict__ index,
                                   int64_t num_index, int64_t words, W* __restrict__ dst) {
  const int64_t groups = (words + k_gather_words - 1) / k_gather_words, total = num_index * groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t i = g / groups, part = g - i * groups;
    const int64_t r = index[i];
    W value[k_gather_words];
#pragma unroll
    for (int j = 0; j < k_gather_words; ++j) {
      const int64_t w = part + j * groups;
      if (w >= words) break;
      if (r >= 0 && r < src_rows) {
        value[j] = src[r * words + w];
      } else {
        memset(&value[j], r == -1 ? 0 : 0xff, sizeof(W));  // no row: zeros; a bad index: NaN bits
      }
    }
#pragma unroll
    for (int j = 0; j < k_gather_words; ++j) {
      const int64_t w = part + j * groups;
      if (w >= words) break;
      dst[i * words + w] = value[j];
    }
  }
}

template <typename W>
void launch_gather(const void* src, int64_t src_rows, const int32_t* index, int64_t num_index, int64_t row_bytes,
                   void* dst, cudaStream_t stream) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(W));
  constexpr int threads = 256;
  const int64_t work = num_index * ceil_div(words, k_gather_words);
  gather_rows_kernel<W><<<grid_for(work, threads), threads, 0, stream>>>(
      static_cast<const W*>(src), src_rows, index, num_index, words, static_cast<W*>(dst));
  CUDA_CHECK_LAUNCH();
}

// src[num_index, cols] -> dst[index[i], :] += src[i, :], two columns per thread when kPairs
// (cols even, rows 4-byte aligned for bf16x2 atomics).
template <typename TDst, typename TSrc, bool kPairs>
__global__ void scatter_add_rows_kernel(const TSrc* src, const int32_t* index, int64_t num_index, int64_t cols,
                                        TDst* dst, int64_t dst_rows) {
  constexpr int kStep = kPairs ? 2 : 1;
  const int64_t per_row = cols / kStep;
  const int64_t total = num_index * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t i = g / per_row, c = (g - i * per_row) * kStep;
    const int64_t r = index[i];
    if (r < 0 || r >= dst_rows) continue;
    TDst* out = dst + r * cols + c;
    const TSrc* in = src + i * cols + c;
    if constexpr (std::is_same_v<TDst, int32_t>) {
      atomicAdd(out, in[0]);
    } else if constexpr (kPairs && std::is_same_v<TDst, bf16>) {
      atomicAdd(reinterpret_cast<__nv_bfloat162*>(out), *reinterpret_cast<const __nv_bfloat162*>(in));
    } else if constexpr (kPairs) {
      atomicAdd(out, to_float(in[0]));
      atomicAdd(out + 1, to_float(in[1]));
    } else if constexpr (std::is_same_v<TDst, bf16>) {
      atomicAdd(out, in[0]);
    } else {
      atomicAdd(out, to_float(in[0]));
    }
  }
}

template <typename TDst, typename TSrc>
void launch_scatter(const void* src, const int32_t* index, int64_t num_index, int64_t cols, void* dst,
                    int64_t dst_rows, cudaStream_t stream) {
  const bool pairs =
      !std::is_same_v<TDst, int32_t> && cols % 2 == 0 && aligned_to(dst, 4) && aligned_to(src, 2 * sizeof(TSrc));
  constexpr int threads = 256;
  const unsigned blocks = grid_for(num_index * (pairs ? cols / 2 : cols), threads);
  if (pairs) {
    scatter_add_rows_kernel<TDst, TSrc, true><<<blocks, threads, 0, stream>>>(
        static_cast<const TSrc*>(src), index, num_index, cols, static_cast<TDst*>(dst), dst_rows);
  } else {
    scatter_add_rows_kernel<TDst, TSrc, false><<<blocks, threads, 0, stream>>>(
        static_cast<const TSrc*>(src), index, num_index, cols, static_cast<TDst*>(dst), dst_rows);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void gather_rows(const void* src, int64_t src_rows, const int32_t* index, int64_t num_index, int64_t row_bytes,
                 void* dst, cudaStream_t stream) {
  MOE_CHECK(num_index >= 0 && row_bytes >= 0, "gather_rows: negative size");
  if (num_index == 0 || row_bytes == 0) return;
  with_row_word(row_bytes, src, dst, [&](auto word) {
    launch_gather<decltype(word)>(src, src_rows, index, num_index, row_bytes, dst, stream);
  });
}

void scatter_add_rows(const void* src, FloatType src_type, const int32_t* index, int64_t num_index, int64_t cols,
                      void* dst, FloatType dst_type, int64_t dst_rows, cudaStream_t stream) {
  MOE_CHECK(num_index >= 0 && cols >= 0, "scatter_add_rows: negative size");
  if (num_index == 0 || cols == 0) return;
  if (dst_type == FloatType::f32 && src_type == FloatType::f32) {
    launch_scatter<float, float>(src, index, num_index, cols, dst, dst_rows, stream);
  } else if (dst_type == FloatType::bf16 && src_type == FloatType::bf16) {
    launch_scatter<bf16, bf16>(src, index, num_index, cols, dst, dst_rows, stream);
  } else if (dst_type == FloatType::f32 && src_type == FloatType::bf16) {
    launch_scatter<float, bf16>(src, index, num_index, cols, dst, dst_rows, stream);
  } else {
    MOE_FAIL("scatter_add_rows: unsupported ", float_type_name(dst_type), " += ", float_type_name(src_type));
  }
}

void scatter_add_rows_i32(const int32_t* src, const int32_t* index, int64_t num_index, int64_t cols, int32_t* dst,
                          int64_t dst_rows, cudaStream_t stream) {
  MOE_CHECK(num_index >= 0 && cols >= 0, "scatter_add_rows: negative size");
  if (num_index == 0 || cols == 0) return;
  launch_scatter<int32_t, int32_t>(src, index, num_index, cols, dst, dst_rows, stream);
}

}  // namespace moe::cuda

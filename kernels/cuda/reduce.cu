// Reductions: double-precision block partials summed on the host in block order (sum,
// sum_squares), and column reductions with per-chunk partials then an ordered final pass.
#include "kernels/cuda/reduce.h"

#include <algorithm>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/device_info.h"

namespace moe::cuda {

using kernels::FloatType;

namespace {

constexpr int k_sum_threads = 256;
constexpr int k_sum_max_blocks = 1024;

// x[n] -> partial[gridDim.x] (double), one partial per block.
template <typename T, bool kSquares>
__global__ void sum_partials_kernel(const T* x, int64_t n, double* partial) {
  __shared__ double scratch[k_warp];
  double acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    double v = to_float(x[i]);
    acc += kSquares ? v * v : v;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// partial[num] -> acc[0] += weight * (their sum), one block, fixed order.
__global__ void accumulate_partials_kernel(const double* partial, int64_t num, double weight, double* acc) {
  __shared__ double scratch[k_warp];
  double s = 0;
  for (int64_t i = threadIdx.x; i < num; i += blockDim.x) s += partial[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) acc[0] += weight * s;
}

// x[rows, cols] -> partial[gridDim.x]: sum over a block's rows of the entropy of the row
// normalised to sum 1, H = log z - (1/z) sum x log x (z = sum x; zeros add nothing). One warp
// per row, rows strided over the grid.
template <typename T>
__global__ void row_entropy_partials_kernel(const T* x, int64_t rows, int64_t cols, double* partial) {
  __shared__ double scratch[k_warp];
  const int warp = static_cast<int>(threadIdx.x) / k_warp, lane = static_cast<int>(threadIdx.x) % k_warp;
  const int warps = static_cast<int>(blockDim.x) / k_warp;
  double acc = 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows; r += static_cast<int64_t>(gridDim.x) * warps) {
    double z = 0, plogp = 0;
    for (int64_t c = lane; c < cols; c += k_warp) {
      const double v = to_float(x[r * cols + c]);
      z += v;
      if (v > 0) plogp += v * log(v);
    }
    for (int offset = k_warp / 2; offset > 0; offset /= 2) {
      z += __shfl_xor_sync(0xffffffffu, z, offset);
      plogp += __shfl_xor_sync(0xffffffffu, plogp, offset);
    }
    if (lane == 0) acc += log(z) - plogp / z;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <bool kSquares>
void launch_sum_partials(const void* x, FloatType type, int64_t n, unsigned blocks, double* partial,
                         cudaStream_t stream) {
  if (type == FloatType::f32) {
    sum_partials_kernel<float, kSquares><<<blocks, k_sum_threads, 0, stream>>>(static_cast<const float*>(x), n,
                                                                               partial);
  } else {
    sum_partials_kernel<__nv_bfloat16, kSquares><<<blocks, k_sum_threads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), n, partial);
  }
  CUDA_CHECK_LAUNCH();
}

void launch_sum_partials(const void* x, FloatType type, int64_t n, bool squares, unsigned blocks, double* partial,
                         cudaStream_t stream) {
  if (squares) {
    launch_sum_partials<true>(x, type, n, blocks, partial, stream);
  } else {
    launch_sum_partials<false>(x, type, n, blocks, partial, stream);
  }
}

constexpr int k_col_tile = 32;  // columns per block (threadIdx.x)
constexpr int k_col_rows = 8;   // row lanes per block (threadIdx.y)

// Pass 1. Block (x, y) reduces columns [32x, 32x+32) over rows [y*rows_per_chunk, ...) into
// partial[y, c] (and partial_plain[y, c] when kPlain).
template <typename T, bool kWeighted, bool kPlain>
__global__ void column_partials_kernel(const T* a, const T* b, const float* scale, const float* shift, int64_t rows,
                                       int64_t cols, int64_t rows_per_chunk, float* partial, float* partial_plain) {
  __shared__ float tile[k_col_rows][k_col_tile + 1];
  __shared__ float tile_plain[k_col_rows][k_col_tile + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * k_col_tile + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  float acc = 0, acc_plain = 0;
  if (c < cols) {
    for (int64_t t = begin + threadIdx.y; t < end; t += k_col_rows) {
      float va = to_float(a[t * cols + c]);
      if constexpr (kWeighted) {
        float centre = shift ? shift[t] : 0.0f;
        acc += va * (to_float(b[t * cols + c]) - centre) * scale[t];
      } else {
        acc += va;
      }
      if constexpr (kPlain) acc_plain += va;
    }
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  if constexpr (kPlain) tile_plain[threadIdx.y][threadIdx.x] = acc_plain;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float s = 0, s_plain = 0;
    for (int r = 0; r < k_col_rows; ++r) {
      s += tile[r][threadIdx.x];
      if constexpr (kPlain) s_plain += tile_plain[r][threadIdx.x];
    }
    partial[blockIdx.y * cols + c] = s;
    if constexpr (kPlain) partial_plain[blockIdx.y * cols + c] = s_plain;
  }
}

// Pass 2. out[c] = (accumulate ? out[c] : 0) + sum_chunk partial[chunk, c], in chunk order.
template <typename TOut>
__global__ void column_finish_kernel(const float* partial, const float* partial_plain, int64_t chunks, int64_t cols,
                                     TOut* out, bool accumulate, float* plain_out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0, s_plain = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    s += partial[k * cols + c];
    if (partial_plain) s_plain += partial_plain[k * cols + c];
  }
  out[c] = from_float<TOut>((accumulate ? to_float(out[c]) : 0.0f) + s);
  if (plain_out) plain_out[c] += s_plain;
}

template <typename T, bool kWeighted, bool kPlain>
void launch_partials(const ColumnReduce& p, int64_t rows_per_chunk, int64_t chunks, float* partial,
                     float* partial_plain, cudaStream_t stream) {
  dim3 grid(static_cast<unsigned>(ceil_div(p.cols, k_col_tile)), static_cast<unsigned>(chunks));
  dim3 block(k_col_tile, k_col_rows);
  column_partials_kernel<T, kWeighted, kPlain><<<grid, block, 0, stream>>>(
      static_cast<const T*>(p.a), static_cast<const T*>(p.b), p.scale, p.shift, p.rows, p.cols, rows_per_chunk,
      partial, partial_plain);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void dispatch_partials(const ColumnReduce& p, int64_t rows_per_chunk, int64_t chunks, float* partial,
                       float* partial_plain, cudaStream_t stream) {
  const bool weighted = p.b != nullptr, plain = p.plain_out != nullptr;
  if (weighted && plain) launch_partials<T, true, true>(p, rows_per_chunk, chunks, partial, partial_plain, stream);
  if (weighted && !plain) launch_partials<T, true, false>(p, rows_per_chunk, chunks, partial, partial_plain, stream);
  if (!weighted && plain) launch_partials<T, false, true>(p, rows_per_chunk, chunks, partial, partial_plain, stream);
  if (!weighted && !plain) launch_partials<T, false, false>(p, rows_per_chunk, chunks, partial, partial_plain, stream);
}

}  // namespace

double sum_to_host(const void* x, FloatType type, int64_t n, bool squares, cudaStream_t stream) {
  if (n <= 0) return 0.0;
  const unsigned blocks = grid_for(n, k_sum_threads, k_sum_max_blocks);
  Scratch partial(blocks * sizeof(double), stream);
  launch_sum_partials(x, type, n, squares, blocks, partial.as<double>(), stream);
  std::vector<double> host(blocks);
  CUDA_CHECK(cudaMemcpyAsync(host.data(), partial.as<double>(), blocks * sizeof(double), cudaMemcpyDeviceToHost,
                             stream));
  wait_stream(stream);
  double total = 0;
  for (double v : host) total += v;
  return total;
}

void sum_accumulate(const void* x, FloatType type, int64_t n, bool squares, double weight, double* acc,
                    cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned blocks = grid_for(n, k_sum_threads, k_sum_max_blocks);
  Scratch partial(blocks * sizeof(double), stream);
  launch_sum_partials(x, type, n, squares, blocks, partial.as<double>(), stream);
  accumulate_partials_kernel<<<1, k_sum_threads, 0, stream>>>(partial.as<double>(), blocks, weight, acc);
  CUDA_CHECK_LAUNCH();
}

void row_entropy_accumulate(const void* x, FloatType type, int64_t rows, int64_t cols, double weight, double* acc,
                            cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int rows_per_block = k_sum_threads / k_warp;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, rows_per_block), k_sum_max_blocks));
  Scratch partial(blocks * sizeof(double), stream);
  if (type == FloatType::f32) {
    row_entropy_partials_kernel<float><<<blocks, k_sum_threads, 0, stream>>>(static_cast<const float*>(x), rows, cols,
                                                                              partial.as<double>());
  } else {
    row_entropy_partials_kernel<__nv_bfloat16><<<blocks, k_sum_threads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), rows, cols, partial.as<double>());
  }
  CUDA_CHECK_LAUNCH();
  accumulate_partials_kernel<<<1, k_sum_threads, 0, stream>>>(partial.as<double>(), blocks, weight, acc);
  CUDA_CHECK_LAUNCH();
}

void column_reduce(const ColumnReduce& p, cudaStream_t stream) {
  MOE_CHECK(p.rows >= 0 && p.cols >= 0, "column_reduce: negative size");
  MOE_CHECK(p.b == nullptr || p.scale != nullptr, "column_reduce: weighted mode needs a row scale");
  if (p.cols == 0) return;
  // Enough chunks of rows to give ~4 blocks per SM, each chunk at least 32 rows.
  const int64_t col_tiles = ceil_div(p.cols, k_col_tile);
  int64_t chunks = ceil_div(4 * static_cast<int64_t>(multiprocessor_count()), col_tiles);
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(ceil_div(p.rows, 32), 1));
  chunks = std::min<int64_t>(chunks, 65535);
  const int64_t rows_per_chunk = std::max<int64_t>(ceil_div(p.rows, chunks), 1);
  const bool plain = p.plain_out != nullptr;
  Scratch partial(static_cast<size_t>(chunks * p.cols) * sizeof(float) * (plain ? 2 : 1), stream);
  float* part = partial.as<float>();
  float* part_plain = plain ? part + chunks * p.cols : nullptr;
  if (p.in_type == FloatType::f32) {
    dispatch_partials<float>(p, rows_per_chunk, chunks, part, part_plain, stream);
  } else {
    dispatch_partials<__nv_bfloat16>(p, rows_per_chunk, chunks, part, part_plain, stream);
  }
  constexpr int threads = 256;
  const unsigned blocks = static_cast<unsigned>(ceil_div(p.cols, threads));
  if (p.out_type == FloatType::f32) {
    column_finish_kernel<float><<<blocks, threads, 0, stream>>>(part, part_plain, chunks, p.cols,
                                                                static_cast<float*>(p.out), p.accumulate, p.plain_out);
  } else {
    column_finish_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(
        part, part_plain, chunks, p.cols, static_cast<__nv_bfloat16*>(p.out), p.accumulate, p.plain_out);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

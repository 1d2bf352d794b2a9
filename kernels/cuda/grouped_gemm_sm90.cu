// The Hopper grouped GEMM: bulk tensor copies into a ring of shared-memory stages, wgmma, and tiles
// scheduled over (expert, row tile, column tile) from the device offsets (the host never waits).
// Layout, schedule and epilogue choices: docs/decisions.md, "Issue 14, the Hopper grouped GEMM".
#include "kernels/cuda/grouped_gemm_sm90.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/wgmma_ptx.cuh"
#include "src/util/check.h"

namespace moe::cuda::sm90 {

namespace {

// forward: y = x @ w[e] (w MN-major); forward_trans_w: y = x @ w[e]^T (w K-major);
// weight_grad: dw[e] += x_e^T @ dy_e, or = when Args::accumulate is false (both operands
// MN-major, the reduction runs over rows).
enum class Mode { forward, forward_trans_w, weight_grad };

constexpr int k_bm = 128, k_bk = 64;
constexpr int k_box = 64;               // 64 bf16 = 128 bytes: the span of the 128-byte swizzle
constexpr int k_box_bytes = 64 * 128;   // a [64 rows][64] box
constexpr int k_consumer_threads = 256;  // warpgroups 0 and 1 multiply (64 rows each)
constexpr int k_threads = k_consumer_threads + 32;  // warp 8 loads
constexpr uint32_t k_consumer_barrier = 1;

template <Mode kMode, int kBN>
struct Tile {
  static constexpr bool a_mn = kMode == Mode::weight_grad;
  static constexpr bool b_mn = kMode != Mode::forward_trans_w;
  static constexpr int a_bytes = k_bm * k_bk * 2;
  static constexpr int b_bytes = kBN * k_bk * 2;
  static constexpr int stage_bytes = a_bytes + b_bytes;
  // Narrow tiles run two blocks per multiprocessor (3 stages each, at most 112 registers a thread),
  // so that one block's epilogue overlaps the other's loads: the weight gradient's reduction is one
  // expert's rows, often only a few k-slices. Wide tiles need the registers of a whole multiprocessor;
  // in the forward they run persistently, staging their output in a buffer of its own (the loader
  // fills the stages with the next tile meanwhile). Every other tile has a block to itself and
  // stages its output in the pipeline's memory.
  static constexpr int blocks_per_sm = kBN == 128 ? 2 : 1;
  static constexpr bool persistent = kMode != Mode::weight_grad && kBN == 256;
  static constexpr int stages = 3;
  static constexpr int pipe_bytes = stages * stage_bytes;
  // Staged output: f32 rows of kBN + 8 (bank spread), or bf16 boxes for the bulk store (below).
  static constexpr int out_bytes = kMode == Mode::weight_grad ? k_bm * (kBN + 8) * 4 : k_bm * kBN * 2;
  static constexpr int out_offset = persistent ? pipe_bytes : 0;
  static constexpr int barrier_offset = persistent ? pipe_bytes + out_bytes : pipe_bytes;
  // + the row-tile schedule: 2 * (E + 1) int32 (forward modes), sized at launch
  static constexpr int fixed_smem_bytes = 1024 + barrier_offset + 2 * stages * 8;
  static_assert(out_bytes <= pipe_bytes, "the staged output fits the pipeline's shared memory");
  static_assert(fixed_smem_bytes <= 227 * 1024, "shared memory per block");
};

constexpr int k_max_smem = 227 * 1024;
// Rows in 32-bit coordinates, with room for a tile's rounding (row + 127 must not overflow).
constexpr int64_t k_max_rows = INT32_MAX - k_bm;

struct Args {
  const int32_t* offsets;
  kernels::GroupedGemmShape shape;
  void* out;  // bf16 y[rows,n] or f32 dw[E,k,n]
  bool accumulate;  // weight gradient: add to dw (else store, zeros for an expert with no rows)
};

// One output tile: its expert, its rows (the reduction's rows for the weight gradient), its first
// output column n0 and, for the weight gradient, its first row m0 of dw[e]. 32-bit: the launchers
// check that rows fit (the bulk copies take 32-bit coordinates anyway).
struct Work {
  int32_t expert, row_begin, row_end, n0, m0;
};

// The forward's row tiles over the experts in order, in shared memory: row_end[e + 1] = where
// expert e's rows end (row_end[0] = 0), tile_start[e] = its first row tile, tile_start[E] = all of
// them. The offsets are read clamped to [0, rows] and made non-decreasing.
struct Schedule {
  int32_t* row_end;     // [E + 1]
  int32_t* tile_start;  // [E + 1]
};

// Built by one warp, 32 experts at a time (running max of the ends, sum of the tiles).
__device__ void build_schedule(const Args& args, const Schedule& sch, int lane) {
  const int64_t num_experts = args.shape.num_experts;
  const auto rows = static_cast<int32_t>(args.shape.rows);
  int32_t end_carry = 0, tile_carry = 0;
  for (int64_t base = 0; base < num_experts; base += k_warp) {
    const int64_t e = base + lane;
    int32_t end = e < num_experts ? min(max(args.offsets[e + 1], 0), rows) : 0;
#pragma unroll
    for (int o = 1; o < k_warp; o <<= 1) {
      const int32_t lower = __shfl_up_sync(k_full_mask, end, o);
      if (lane >= o) end = max(end, lower);
    }
    end = max(end, end_carry);
    int32_t begin = __shfl_up_sync(k_full_mask, end, 1);
    if (lane == 0) begin = end_carry;
    const int32_t tiles = e < num_experts ? (end - begin + k_bm - 1) / k_bm : 0;
    const int32_t upto = warp_inclusive_sum(tiles, lane);
    if (e < num_experts) {
      sch.row_end[e + 1] = end;
      sch.tile_start[e] = tile_carry + upto - tiles;
    }
    end_carry = __shfl_sync(k_full_mask, end, k_warp - 1);
    tile_carry += __shfl_sync(k_full_mask, upto, k_warp - 1);
  }
  if (lane == 0) {
    sch.row_end[0] = 0;
    sch.tile_start[num_experts] = tile_carry;
  }
}

// Forward tile `tile` = row tile * column tiles + column tile; false past the last row tile.
template <int kBN>
__device__ bool forward_work(const Args& args, const Schedule& sch, int64_t tile, int64_t col_tiles, Work& w) {
  const int64_t num_experts = args.shape.num_experts;
  const int64_t row_tile = tile / col_tiles;
  if (row_tile >= sch.tile_start[num_experts]) return false;
  int64_t lo = 0, hi = num_experts;  // tile_start[lo] <= row_tile < tile_start[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (sch.tile_start[mid] <= row_tile) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  w.expert = static_cast<int32_t>(lo);
  w.row_begin = sch.row_end[lo] + static_cast<int32_t>(row_tile - sch.tile_start[lo]) * k_bm;
  w.row_end = sch.row_end[lo + 1];
  w.n0 = static_cast<int32_t>((tile % col_tiles) * kBN);
  w.m0 = 0;
  return true;
}

// Weight gradient: blockIdx.z is the expert, (x, y) the tile of dw[e]; false when there is
// nothing to add.
template <int kBN>
__device__ bool weight_grad_work(const Args& args, Work& w) {
  const kernels::GroupedGemmShape& s = args.shape;
  const auto rows = static_cast<int32_t>(s.rows);
  w.expert = static_cast<int32_t>(blockIdx.z);
  w.row_begin = min(max(args.offsets[w.expert], 0), rows);
  w.row_end = min(max(args.offsets[w.expert + 1], w.row_begin), rows);
  w.n0 = static_cast<int32_t>(blockIdx.x) * kBN;
  w.m0 = static_cast<int32_t>(blockIdx.y) * k_bm;
  return w.row_end > w.row_begin || !args.accumulate;
}

// Issues the bulk copies of k-slice `it` into one stage (producer thread only).
template <Mode kMode, int kBN>
__device__ __forceinline__ void load_stage(uint8_t* a, uint8_t* b, uint64_t* full, const CUtensorMap* map_a,
                                           const CUtensorMap* map_b, const Work& w, const Args& args, int it) {
  using T = Tile<kMode, kBN>;
  const kernels::GroupedGemmShape& s = args.shape;
  const int32_t k0 = it * k_bk, n0 = w.n0;
  mbar_arrive_expect_tx(full, T::stage_bytes);
  if constexpr (kMode == Mode::weight_grad) {
    const int32_t r = w.row_begin + k0, m0 = w.m0;
#pragma unroll
    for (int h = 0; h < k_bm / k_box; ++h) tma_load_2d(a + h * k_box_bytes, map_a, full, m0 + h * k_box, r);
#pragma unroll
    for (int h = 0; h < kBN / k_box; ++h) tma_load_2d(b + h * k_box_bytes, map_b, full, n0 + h * k_box, r);
  } else {
    tma_load_2d(a, map_a, full, k0, w.row_begin);
    if constexpr (T::b_mn) {  // w[e] is [k, n]: boxes of 64 columns, rows e*k + k0...
      const int32_t r = static_cast<int32_t>(w.expert * s.k + k0);
#pragma unroll
      for (int h = 0; h < kBN / k_box; ++h) tma_load_2d(b + h * k_box_bytes, map_b, full, n0 + h * k_box, r);
    } else {  // w[e] is [n, k]: one box of kBN rows e*n + n0...
      tma_load_2d(b, map_b, full, k0, static_cast<int32_t>(w.expert * s.n + n0));
    }
  }
}

// Zeroes the rows [valid, 64) of every box of a stage: the reduction rows past the expert's end.
template <int kBN>
__device__ __forceinline__ void zero_tail_rows(uint8_t* stage, int valid, int t) {
  constexpr int boxes = (k_bm + kBN) / k_box;
  const int rows = k_bk - valid, chunks = boxes * rows * 8;
  for (int i = t; i < chunks; i += k_consumer_threads) {
    const int box = i / (rows * 8), rem = i % (rows * 8);
    *reinterpret_cast<uint4*>(stage + box * k_box_bytes + (valid + rem / 8) * 128 + (rem % 8) * 16) =
        make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async();
  named_barrier(k_consumer_barrier, k_consumer_threads);
}

// The four 16-deep MMAs of one stage for consumer warpgroup `cw` (rows 64*cw...).
template <Mode kMode, int kBN>
__device__ __forceinline__ void mma_stage(float (&acc)[kBN / 2], const uint8_t* a, const uint8_t* b, int cw) {
  using T = Tile<kMode, kBN>;
  const uint32_t a_addr = smem_addr(a) + cw * k_box_bytes, b_addr = smem_addr(b);
#pragma unroll
  for (int kk = 0; kk < k_bk / 16; ++kk) {
    // K-major: 16 columns = 32 bytes along the swizzled row; MN-major: 16 rows = 2048 bytes.
    const uint64_t da = T::a_mn ? smem_desc_sw128(a_addr + kk * 2048, k_box_bytes, 1024)
                                : smem_desc_sw128(a_addr + kk * 32, 16, 1024);
    const uint64_t db = T::b_mn ? smem_desc_sw128(b_addr + kk * 2048, k_box_bytes, 1024)
                                : smem_desc_sw128(b_addr + kk * 32, 16, 1024);
    Wgmma<kBN, T::a_mn ? 1 : 0, T::b_mn ? 1 : 0>::mma(acc, da, db);
  }
}

// The forward's staged output: kBN / 64 boxes of [128 rows][64 columns] bf16 with the 128-byte
// swizzle, the layout the bulk tensor store reads: row r's 16-byte chunk j sits at chunk j ^ (r % 8)
// (so the fragment writes below hit 32 distinct banks). Byte offset of (row r, column c).
constexpr int k_out_box_bytes = k_bm * 128;
__device__ __forceinline__ int staged_offset(int r, int c) {
  return (c / k_box) * k_out_box_bytes + r * 128 + ((((c % k_box) / 8) ^ (r % 8)) * 16) + (c % 8) * 2;
}

// Writes the accumulators (rows 64*cw + ..., the wgmma fragment layout) into the staged tile:
// f32 rows of kBN + 8, or the bf16 boxes above.
template <typename Out, int kBN>
__device__ __forceinline__ void stage_accumulators(uint8_t* tile, const float (&acc)[kBN / 2], int cw, int t) {
  constexpr int stride = kBN + 8;
  const int warp = (t % 128) / 32, lane = t % 32;
  const int r0 = cw * 64 + warp * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j) {
    const int c = j * 8 + (lane % 4) * 2;
    if constexpr (sizeof(Out) == 4) {
      auto* f = reinterpret_cast<float*>(tile);
      *reinterpret_cast<float2*>(f + r0 * stride + c) = make_float2(acc[4 * j], acc[4 * j + 1]);
      *reinterpret_cast<float2*>(f + (r0 + 8) * stride + c) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
    } else {
      *reinterpret_cast<__nv_bfloat162*>(tile + staged_offset(r0, c)) = __floats2bfloat162_rn(acc[4 * j], acc[4 * j + 1]);
      *reinterpret_cast<__nv_bfloat162*>(tile + staged_offset(r0 + 8, c)) =
          __floats2bfloat162_rn(acc[4 * j + 2], acc[4 * j + 3]);
    }
  }
}

// The weight gradient adds (or stores) f32 rows; the forward's whole tiles leave through bulk tensor
// stores issued by one thread (the warpgroups go on at once), an expert's last, partial tile
// through 16-byte stores of its own rows (the rows past them are the next expert's).
template <Mode kMode, int kBN>
__device__ __forceinline__ void epilogue(uint8_t* smem, const CUtensorMap* map_out, const float (&acc)[kBN / 2],
                                         const Work& w, const Args& args, int cw, int t) {
  constexpr int stride = kBN + 8;
  const kernels::GroupedGemmShape& s = args.shape;
  const int64_t n0 = w.n0;
  if (kMode != Mode::weight_grad && t == 0) bulk_wait_group_read();  // the last tile's stores have left
  // Both warpgroups are done with the stages (a block of one tile stages its output there) and
  // with the last tile's staged output (a persistent block).
  named_barrier(k_consumer_barrier, k_consumer_threads);
  if constexpr (kMode == Mode::weight_grad) {
    auto* tile = reinterpret_cast<float*>(smem);
    stage_accumulators<float, kBN>(smem, acc, cw, t);
    named_barrier(k_consumer_barrier, k_consumer_threads);
    const int64_t m0 = w.m0;
    float* dw = static_cast<float*>(args.out) + static_cast<int64_t>(w.expert) * s.k * s.n;
    for (int i = t; i < k_bm * kBN / 4; i += k_consumer_threads) {
      const int r = i / (kBN / 4), c = (i % (kBN / 4)) * 4;
      const int64_t row = m0 + r, col = n0 + c;
      if (row < s.k && col < s.n) {
        float4* p = reinterpret_cast<float4*>(dw + row * s.n + col);
        float4 v = *reinterpret_cast<const float4*>(tile + r * stride + c);
        if (args.accumulate) {
          const float4 old = *p;
          v.x += old.x, v.y += old.y, v.z += old.z, v.w += old.w;
        }
        *p = v;
      }
    }
  } else {
    stage_accumulators<__nv_bfloat16, kBN>(smem, acc, cw, t);
    fence_proxy_async();  // the staged tile is read by the bulk copy
    named_barrier(k_consumer_barrier, k_consumer_threads);
    if (w.row_end - w.row_begin >= k_bm) {
      if (t == 0) {
#pragma unroll
        for (int b = 0; b < kBN / k_box; ++b) {
          tma_store_2d(map_out, smem + b * k_out_box_bytes, w.n0 + b * k_box, w.row_begin);
        }
        bulk_commit_group();
      }
    } else {
      auto* y = static_cast<__nv_bfloat16*>(args.out);
      for (int i = t; i < k_bm * kBN / 8; i += k_consumer_threads) {
        const int r = i / (kBN / 8), c = (i % (kBN / 8)) * 8;
        const int64_t row = w.row_begin + r, col = n0 + c;
        if (row < w.row_end && col < s.n) {
          *reinterpret_cast<uint4*>(y + row * s.n + col) = *reinterpret_cast<const uint4*>(smem + staged_offset(r, c));
        }
      }
    }
  }
}

// The k-slices of a tile: the inner dimension (forward) or the expert's rows (weight gradient).
template <Mode kMode>
__device__ __forceinline__ int k_slices(const Work& w, const Args& args) {
  return kMode != Mode::weight_grad ? static_cast<int>((args.shape.k + k_bk - 1) / k_bk)
                                    : (w.row_end - w.row_begin + k_bk - 1) / k_bk;
}

// The loader's side of one tile: each k-slice into the next free stage of the ring.
template <Mode kMode, int kBN>
__device__ __forceinline__ void load_tile(uint8_t* smem, uint64_t* full, uint64_t* empty, const CUtensorMap* map_a,
                                          const CUtensorMap* map_b, const Work& w, const Args& args, int& ring) {
  using T = Tile<kMode, kBN>;
  const int slices = k_slices<kMode>(w, args);
  for (int it = 0; it < slices; ++it, ++ring) {
    const int s = ring % T::stages;
    mbar_wait(&empty[s], ((ring / T::stages) & 1) ^ 1);
    uint8_t* a = smem + s * T::stage_bytes;
    load_stage<kMode, kBN>(a, a + T::a_bytes, &full[s], map_a, map_b, w, args, it);
  }
}

// The multiplying warpgroups' side of one tile: the k-slices from the ring, then the epilogue. In
// the forward modes a warpgroup whose 64 rows all lie past the expert's end (an expert's last tile
// of 64 rows or fewer) issues no MMAs, leaving the tensor cores to the other; it still passes every
// stage through the ring and stages its zeros, which no store reads.
template <Mode kMode, int kBN>
__device__ __forceinline__ void multiply_tile(uint8_t* smem, uint8_t* out_tile, const CUtensorMap* map_out,
                                              uint64_t* full, uint64_t* empty, const Work& w, const Args& args,
                                              int& ring) {
  using T = Tile<kMode, kBN>;
  const int t = static_cast<int>(threadIdx.x), cw = t / 128;
  const bool idle = kMode != Mode::weight_grad && w.row_begin + cw * 64 >= w.row_end;
  float acc[kBN / 2];
#pragma unroll
  for (int j = 0; j < kBN / 2; ++j) acc[j] = 0.f;
  fence_registers(acc);
  const int slices = k_slices<kMode>(w, args);
  for (int it = 0; it < slices; ++it, ++ring) {
    const int s = ring % T::stages;
    mbar_wait(&full[s], (ring / T::stages) & 1);
    uint8_t* a = smem + s * T::stage_bytes;
    if constexpr (kMode == Mode::weight_grad) {
      const int valid = w.row_end - w.row_begin - it * k_bk;
      if (valid < k_bk) zero_tail_rows<kBN>(a, valid, t);
    }
    fence_registers(acc);
    wgmma_fence();
    if (!idle) mma_stage<kMode, kBN>(acc, a, a + T::a_bytes, cw);
    wgmma_commit();
    wgmma_wait<1>();
    fence_registers(acc);
    if (it > 0 && t % 128 == 0) mbar_arrive(&empty[(ring - 1) % T::stages]);
  }
  wgmma_wait<0>();
  fence_registers(acc);
  if (slices > 0 && t % 128 == 0) mbar_arrive(&empty[(ring - 1) % T::stages]);  // the tile's last stage
  epilogue<kMode, kBN>(out_tile, map_out, acc, w, args, cw, t);
}

template <Mode kMode, int kBN>
__global__ void __launch_bounds__(k_threads, Tile<kMode, kBN>::blocks_per_sm)
    grouped_gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                             const __grid_constant__ CUtensorMap map_out, Args args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = Tile<kMode, kBN>;
  constexpr bool forward = kMode != Mode::weight_grad;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* out_tile = smem + T::out_offset;
  auto* full = reinterpret_cast<uint64_t*>(smem + T::barrier_offset);
  uint64_t* empty = full + T::stages;
  auto* schedule_words = reinterpret_cast<int32_t*>(empty + T::stages);
  const Schedule sch{schedule_words, schedule_words + args.shape.num_experts + 1};
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::stages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 2);  // one arrival per consumer warpgroup
    }
    fence_barrier_init();
  }
  if (forward && threadIdx.x < k_warp) build_schedule(args, sch, static_cast<int>(threadIdx.x));
  __syncthreads();
  // The block's i-th tile: blockIdx.x + i * gridDim.x in the forward (a persistent grid walks
  // many), the one tile of blockIdx for the weight gradient.
  const int64_t col_tiles = (args.shape.n + kBN - 1) / kBN;
  auto work = [&](int64_t i, Work& w) {
    if constexpr (forward) {
      return forward_work<kBN>(args, sch, blockIdx.x + i * static_cast<int64_t>(gridDim.x), col_tiles, w);
    } else {
      return i == 0 && weight_grad_work<kBN>(args, w);
    }
  };
  // Both sides count the k-slices they have passed through the ring (`ring`), over all tiles.
  Work w{};
  int ring = 0;
  if (threadIdx.x >= k_consumer_threads) {  // the loader warp
    if (threadIdx.x == k_consumer_threads) {
      if constexpr (T::persistent) {
        for (int64_t i = 0; work(i, w); ++i) load_tile<kMode, kBN>(smem, full, empty, &map_a, &map_b, w, args, ring);
      } else if (work(0, w)) {
        load_tile<kMode, kBN>(smem, full, empty, &map_a, &map_b, w, args, ring);
      }
    }
    return;
  }
  if constexpr (T::persistent) {
    for (int64_t i = 0; work(i, w); ++i) {
      multiply_tile<kMode, kBN>(smem, out_tile, &map_out, full, empty, w, args, ring);
    }
  } else if (work(0, w)) {
    multiply_tile<kMode, kBN>(smem, out_tile, &map_out, full, empty, w, args, ring);
  }
  if (forward && threadIdx.x == 0) bulk_wait_group();  // the bulk stores are complete before the block ends
#endif
}

// ---- host side ----

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    MOE_CHECK(found == cudaDriverEntryPointSuccess && p != nullptr,
              "grouped gemm on CUDA: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A 2-D bf16 tensor map over a row-major [outer, inner] matrix, boxes of [box_outer, 64] with the
// 128-byte swizzle; reads outside the matrix return zeros.
CUtensorMap tensor_map(const void* base, int64_t inner, int64_t outer, int box_outer) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(inner) * 2};
  const cuuint32_t box[2] = {k_box, static_cast<cuuint32_t>(box_outer)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims,
                                    strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  MOE_CHECK(r == CUDA_SUCCESS, "grouped gemm on CUDA: cuTensorMapEncodeTiled failed (", static_cast<int>(r),
            ") for a [", outer, ", ", inner, "] matrix");
  return map;
}

// Shared memory of a launch: the tile's fixed part and the forward's row-tile schedule.
template <Mode kMode, int kBN>
int smem_bytes(int64_t num_experts) {
  const int64_t schedule = kMode == Mode::weight_grad ? 0 : 2 * (num_experts + 1) * 4;
  return Tile<kMode, kBN>::fixed_smem_bytes + static_cast<int>(schedule);
}

// map_out: the forward's y (bulk stores); unused by the weight gradient.
template <Mode kMode, int kBN>
void launch(const CUtensorMap& a, const CUtensorMap& b, const CUtensorMap& out, const Args& args, dim3 grid,
            cudaStream_t stream) {
  static const bool configured = [] {
    CUDA_CHECK(cudaFuncSetAttribute(grouped_gemm_sm90_kernel<kMode, kBN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    k_max_smem));
    return true;
  }();
  (void)configured;
  const int smem = smem_bytes<kMode, kBN>(args.shape.num_experts);
  MOE_CHECK(smem <= k_max_smem, "grouped gemm on CUDA: ", args.shape.num_experts,
            " experts overflow the Hopper kernel's shared memory");
  grouped_gemm_sm90_kernel<kMode, kBN><<<grid, k_threads, smem, stream>>>(a, b, out, args);
  CUDA_CHECK_LAUNCH();
}

// The forward's grid: every (row tile, column tile) the offsets may produce, or one block per
// multiprocessor when the tiles are persistent.
template <Mode kMode, int kBN>
dim3 forward_grid(const kernels::GroupedGemmShape& s) {
  const int64_t tiles = ceil_div(s.n, kBN) * (ceil_div(s.rows, k_bm) + s.num_experts);
  const int64_t blocks = Tile<kMode, kBN>::persistent ? std::min<int64_t>(tiles, multiprocessor_count()) : tiles;
  MOE_CHECK(blocks <= INT32_MAX, "grouped gemm on CUDA: ", tiles, " output tiles");
  return dim3(static_cast<unsigned>(blocks));
}

template <Mode kMode, int kBN>
void launch_forward(const CUtensorMap& a, const CUtensorMap& b, const Args& args, cudaStream_t stream) {
  const CUtensorMap y = tensor_map(args.out, args.shape.n, args.shape.rows, k_bm);
  launch<kMode, kBN>(a, b, y, args, forward_grid<kMode, kBN>(args.shape), stream);
}

// Wide column tiles halve the loads of A per FLOP; narrow outputs waste less of them.
bool wide_columns(int64_t n) { return n >= 512 && n % 256 == 0; }

}  // namespace

int64_t max_forward_experts() {
  return (k_max_smem - Tile<Mode::forward, 256>::fixed_smem_bytes) / 8 - 1;
}

bool grouped_gemm_available() {
#if defined(MOE_WITH_SM90A)
  static const bool available = [] {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major == 9 && minor == 0;
  }();
  return available;
#else
  return false;
#endif
}

void grouped_gemm_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* w, bool trans_w,
                       __nv_bfloat16* y, const kernels::GroupedGemmShape& s, bool wide_tiles,
                       cudaStream_t stream) {
  MOE_CHECK(s.rows <= k_max_rows && s.num_experts <= max_forward_experts(), "grouped gemm on CUDA: ", s.rows,
            " rows over ", s.num_experts, " experts exceed the Hopper kernel (at most ", k_max_rows, " rows and ",
            max_forward_experts(), " experts)");
  const Args args{offsets, s, y, false};
  const bool wide = wide_tiles && wide_columns(s.n);
  const int bn = wide ? 256 : 128;
  const CUtensorMap map_x = tensor_map(x, s.k, s.rows, k_bm);
  if (trans_w) {
    const CUtensorMap map_w = tensor_map(w, s.k, s.num_experts * s.n, bn);
    if (wide) {
      launch_forward<Mode::forward_trans_w, 256>(map_x, map_w, args, stream);
    } else {
      launch_forward<Mode::forward_trans_w, 128>(map_x, map_w, args, stream);
    }
  } else {
    const CUtensorMap map_w = tensor_map(w, s.n, s.num_experts * s.k, k_bk);
    if (wide) {
      launch_forward<Mode::forward, 256>(map_x, map_w, args, stream);
    } else {
      launch_forward<Mode::forward, 128>(map_x, map_w, args, stream);
    }
  }
}

void grouped_gemm_weight_grad_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* dy,
                                   float* dw, const kernels::GroupedGemmShape& s, bool accumulate,
                                   cudaStream_t stream) {
  MOE_CHECK(s.rows <= k_max_rows, "grouped gemm on CUDA: ", s.rows, " rows exceed the Hopper kernel (", k_max_rows,
            ")");
  const Args args{offsets, s, dw, accumulate};
  const CUtensorMap map_x = tensor_map(x, s.k, s.rows, k_bk), map_dy = tensor_map(dy, s.n, s.rows, k_bk);
  const dim3 grid128(static_cast<unsigned>(ceil_div(s.n, 128)), static_cast<unsigned>(ceil_div(s.k, k_bm)),
                     static_cast<unsigned>(s.num_experts));
  // The weight gradient adds into dw with ordinary stores: map_x only fills the unused output map.
  launch<Mode::weight_grad, 128>(map_x, map_dy, map_x, args, grid128, stream);
}

}  // namespace moe::cuda::sm90

// The Hopper grouped GEMM's device side: tile types, the work schedule, the loader's and the
// multiplying warpgroups' sides of a tile, the epilogues and the kernel. Included by
// grouped_gemm_sm90.cu alone (its host side: tensor maps, launches, the choice of tile).
// Layout, schedule and epilogue choices: docs/decisions.md, "Issue 14, the Hopper grouped GEMM".
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/wgmma_ptx.cuh"
#include "kernels/params.h"
#include "kernels/tile_order.h"

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

// A kernel's tile: its mode, its output width kBN, and whether its blocks are persistent (one per
// multiprocessor, walking many tiles) or have one tile each.
template <Mode kMode, int kBN, bool kPersistent>
struct Tile {
  static constexpr Mode mode = kMode;
  static constexpr int bn = kBN;
  static constexpr bool weight_grad = kMode == Mode::weight_grad;
  static constexpr bool a_mn = weight_grad;
  static constexpr bool b_mn = kMode != Mode::forward_trans_w;
  static constexpr int a_bytes = k_bm * k_bk * 2;
  static constexpr int b_bytes = kBN * k_bk * 2;
  static constexpr int stage_bytes = a_bytes + b_bytes;
  // A block of one narrow tile shares its multiprocessor with another (3 stages each, at most 112
  // registers a thread), so that one block's epilogue overlaps the other's loads. A persistent block
  // has the multiprocessor to itself: the loader fills the stages with the next tile meanwhile. The
  // persistent forward stages its bf16 output in a buffer of its own, which leaves by bulk tensor
  // stores. The persistent weight gradient writes its f32 fragments straight from the registers
  // (4 stages of ring: an expert's k-slices, a whole next tile fetched during the epilogue).
  static constexpr bool persistent = kPersistent;
  static constexpr int blocks_per_sm = !kPersistent && kBN == 128 ? 2 : 1;
  static constexpr int stages = !(kPersistent && weight_grad) ? 3 : 4;
  static constexpr int pipe_bytes = stages * stage_bytes;
  // Staged output: bf16 boxes for the forward's bulk tensor stores, or f32 rows of kBN + 8 (bank
  // spread) that a block-per-tile weight gradient adds or stores with ordinary stores.
  static constexpr bool boxed_out = !weight_grad;
  static constexpr bool fragment_out = weight_grad && kPersistent;
  static constexpr int out_bytes = !weight_grad ? k_bm * kBN * 2 : kPersistent ? 0 : k_bm * (kBN + 8) * 4;
  // The persistent weight gradient sorts its experts by rows (sort_experts_by_rows).
  static constexpr bool sorted_experts = weight_grad && kPersistent;
  static constexpr int out_offset = persistent ? pipe_bytes : 0;
  static constexpr int barrier_offset = persistent ? pipe_bytes + out_bytes : pipe_bytes;
  // + the row-tile schedule, 2 * (E + 1) int32 (forward modes), or the expert order, E int32 (the
  // persistent weight gradient; its sort counts the rows in the ring, not yet filled), sized at launch
  static constexpr int fixed_smem_bytes = 1024 + barrier_offset + 2 * stages * 8;
  static_assert(kBN % k_box == 0 && (kBN == 128 || kPersistent), "widths of 64s; wider than 128 only persistent");
  static_assert(persistent || out_bytes <= pipe_bytes, "the staged output fits the pipeline's shared memory");
  static_assert(fixed_smem_bytes <= 227 * 1024, "shared memory per block");
};
// The kernels built: the forward's 256- and 192-wide tiles persistent, its 128-wide ones a block
// each; the weight gradient's persistent fragment-written 256-wide tiles (`wgmma`; 128-wide where
// n < 256 or where weight_grad_tile_width says so) and
// block-per-tile 128-wide ones (`wgmma_narrow`); grouped_gemm_sm90_resident.cuh has the weight
// gradient with dy resident (`wgmma` on short reductions).
template <Mode kMode, int kBN>
using PersistentTile = Tile<kMode, kBN, true>;
template <Mode kMode>
using NarrowTile = Tile<kMode, 128, false>;

constexpr int k_max_smem = 227 * 1024;
// Rows in 32-bit coordinates, with room for a tile's rounding (row + 127 must not overflow).
constexpr int64_t k_max_rows = INT32_MAX - k_bm;

struct Args {
  const int32_t* offsets;
  kernels::GroupedGemmShape shape;
  void* out;  // bf16 y[rows,n] or f32 dw[E,k,n]: bulk stores write it through its tensor map, or the threads directly
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

// Weight-gradient tiles: expert-major (an expert's tiles run together and share its rows in L2),
// then row tile of dw[e], then column tile.
template <int kBN>
__device__ __forceinline__ int64_t weight_grad_tiles(const kernels::GroupedGemmShape& s) {
  return s.num_experts * ((s.k + k_bm - 1) / k_bm) * ((s.n + kBN - 1) / kBN);
}

// Expert e's rows [begin, end) of the reduction, its offsets clamped to [0, rows] and ordered.
__device__ __forceinline__ int2 expert_rows(const Args& args, int64_t e) {
  const auto rows = static_cast<int32_t>(args.shape.rows);
  const int32_t begin = min(max(args.offsets[e], 0), rows);
  return make_int2(begin, min(max(args.offsets[e + 1], begin), rows));
}

// A persistent weight gradient's tile costs follow its expert's rows. So that the blocks' shares
// even out, every block sorts the experts by decreasing rows (kernels/tile_order.h) into order[E],
// counting them in rows_of[E] (scratch: the ring's memory before the loader fills it), takes the
// tiles in that expert order, and walks the rounds of tiles in a snake: the longest tiles go
// first, and a block that had a longer tile in one round gets a shorter one in the next.
__device__ void sort_experts_by_rows(const Args& args, int32_t* order, int32_t* rows_of) {
  const int64_t num_experts = args.shape.num_experts;
  for (int64_t e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int2 r = expert_rows(args, e);
    rows_of[e] = r.y - r.x;
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < num_experts; e += blockDim.x) {
    order[kernels::rank_by_rows(rows_of, num_experts, e)] = static_cast<int32_t>(e);
  }
  fence_proxy_async();  // rows_of's ordinary accesses before the bulk copies that refill it
}

// The i-th tile of this block: a plain stride for the forward (its row tiles cost alike), the
// snake for the sorted weight gradient.
template <bool kSnake>
__device__ __forceinline__ int64_t block_tile(int i) {
  const int b = static_cast<int>(blockIdx.x), g = static_cast<int>(gridDim.x);
  return kSnake ? kernels::snake_tile(i, b, g) : static_cast<int64_t>(i) * g + b;
}

// Weight-gradient tile `tile` (of the experts in `order`, or in index order where order is null);
// false when there is nothing to add (an expert with no rows).
template <int kBN>
__device__ bool weight_grad_work(const Args& args, const int32_t* order, int64_t tile, Work& w) {
  const kernels::GroupedGemmShape& s = args.shape;
  const int64_t col_tiles = (s.n + kBN - 1) / kBN, per_expert = ((s.k + k_bm - 1) / k_bm) * col_tiles;
  const int64_t within = tile % per_expert, position = tile / per_expert;
  w.expert = order != nullptr ? order[position] : static_cast<int32_t>(position);
  const int2 r = expert_rows(args, w.expert);
  w.row_begin = r.x;
  w.row_end = r.y;
  w.n0 = static_cast<int32_t>(within % col_tiles) * kBN;
  w.m0 = static_cast<int32_t>(within / col_tiles) * k_bm;
  return w.row_end > w.row_begin || !args.accumulate;
}

// Issues the bulk copies of k-slice `it` into one stage (producer thread only).
template <class T>
__device__ __forceinline__ void load_stage(uint8_t* a, uint8_t* b, uint64_t* full, const CUtensorMap* map_a,
                                           const CUtensorMap* map_b, const Work& w, const Args& args, int it) {
  constexpr Mode kMode = T::mode;
  constexpr int kBN = T::bn;
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

// Zeroes the rows [valid, 64) of `boxes` consecutive boxes from `first`: the reduction rows past
// the expert's end (the consumer warpgroups together, then a barrier among them).
template <int kBoxes>
__device__ __forceinline__ void zero_box_rows(uint8_t* first, int valid, int t) {
  // 16-byte chunks of the rows [valid, 64) of a box, 8 a row: the thread's chunk i of each box.
  for (int i = t; i < (k_bk - valid) * 8; i += k_consumer_threads) {
#pragma unroll
    for (int box = 0; box < kBoxes; ++box) {
      *reinterpret_cast<uint4*>(first + box * k_box_bytes + (valid + i / 8) * 128 + (i % 8) * 16) =
          make_uint4(0, 0, 0, 0);
    }
  }
  fence_proxy_async();
  named_barrier(k_consumer_barrier, k_consumer_threads);
}

// Every box of a stage (its x boxes, then its dy boxes).
template <int kBN>
__device__ __forceinline__ void zero_tail_rows(uint8_t* stage, int valid, int t) {
  zero_box_rows<(k_bm + kBN) / k_box>(stage, valid, t);
}

// The four 16-deep MMAs of one stage for consumer warpgroup `cw` (rows 64*cw...).
template <class T>
__device__ __forceinline__ void mma_stage(float (&acc)[T::bn / 2], const uint8_t* a, const uint8_t* b, int cw) {
  constexpr int kBN = T::bn;
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

// Output staged for the bulk tensor store: boxes of [128 rows][128 bytes] (64 bf16 columns) with
// the 128-byte swizzle, the layout the store reads: row r's 16-byte chunk j sits at
// chunk j ^ (r % 8) (so the fragment writes below take the fewest shared-memory wavefronts). Byte
// offset of (row r, column c) for elements of kElem bytes.
constexpr int k_out_box_bytes = k_bm * 128;
template <int kElem>
__device__ __forceinline__ int staged_offset(int r, int c) {
  constexpr int box_cols = 128 / kElem, chunk = 16 / kElem;
  return (c / box_cols) * k_out_box_bytes + r * 128 + ((((c % box_cols) / chunk) ^ (r % 8)) * 16) + (c % chunk) * kElem;
}

// Writes the accumulators (rows 64*cw + ..., the wgmma fragment layout) into the staged tile:
// bf16 boxes as above (kBoxed), or f32 rows of kBN + 8.
template <typename Out, int kBN, bool kBoxed>
__device__ __forceinline__ void stage_accumulators(uint8_t* tile, const float (&acc)[kBN / 2], int cw, int t) {
  constexpr int stride = kBN + 8;
  const int warp = (t % 128) / 32, lane = t % 32;
  const int r0 = cw * 64 + warp * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j) {
    const int c = j * 8 + (lane % 4) * 2;
    if constexpr (sizeof(Out) == 4) {
      static_assert(!kBoxed, "f32 output is staged in rows");
      auto* f = reinterpret_cast<float*>(tile);
      *reinterpret_cast<float2*>(f + r0 * stride + c) = make_float2(acc[4 * j], acc[4 * j + 1]);
      *reinterpret_cast<float2*>(f + (r0 + 8) * stride + c) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
    } else {
      static_assert(kBoxed, "bf16 output is staged in boxes");
      *reinterpret_cast<__nv_bfloat162*>(tile + staged_offset<2>(r0, c)) =
          __floats2bfloat162_rn(acc[4 * j], acc[4 * j + 1]);
      *reinterpret_cast<__nv_bfloat162*>(tile + staged_offset<2>(r0 + 8, c)) =
          __floats2bfloat162_rn(acc[4 * j + 2], acc[4 * j + 3]);
    }
  }
}

// The persistent weight gradient's epilogue: each thread writes its fragments of dw[e] straight
// from the registers (rows m0 + 64*cw + ..., clipped at k and n), float2 stores, or float2
// reductions (`red.global.add.v2.f32`) with `add`. A warp's store covers whole 32-byte
// sectors of 8 rows; nothing is staged or waited for, so the warpgroup goes on to its next tile
// while the stores drain.
template <int kBN>
__device__ __forceinline__ void write_weight_grad_fragments(const float (&acc)[kBN / 2], const Work& w,
                                                            const Args& args, bool add, int cw, int t) {
  const kernels::GroupedGemmShape& s = args.shape;
  const int warp = (t % 128) / 32, lane = t % 32;
  float* dw = static_cast<float*>(args.out) + static_cast<int64_t>(w.expert) * s.k * s.n;
  const int64_t col0 = w.n0 + (lane % 4) * 2;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = w.m0 + cw * 64 + warp * 16 + lane / 4 + half * 8;
    if (row >= s.k) continue;
    float* dw_row = dw + row * s.n;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t col = col0 + j * 8;  // n is a multiple of 8: col < n covers col + 1
      if (col >= s.n) continue;
      const float a = acc[4 * j + 2 * half], b = acc[4 * j + 2 * half + 1];
      if (add) {
        red_add_f32x2(dw_row + col, a, b);
      } else {
        *reinterpret_cast<float2*>(dw_row + col) = make_float2(a, b);
      }
    }
  }
}

// A persistent weight gradient writes its fragments (above); a block-per-tile one adds (or stores)
// staged f32 rows with ordinary stores. The forward's whole tiles leave through bulk tensor stores issued by
// one thread (the warpgroups go on at once), an expert's last, partial tile through 16-byte stores
// of its own rows (the rows past them are the next expert's).
template <class T>
__device__ __forceinline__ void epilogue(uint8_t* smem, const CUtensorMap* map_out, const float (&acc)[T::bn / 2],
                                         const Work& w, const Args& args, int cw, int t) {
  constexpr int kBN = T::bn;
  constexpr int stride = kBN + 8;
  const kernels::GroupedGemmShape& s = args.shape;
  const int64_t n0 = w.n0;
  if constexpr (T::fragment_out) {
    write_weight_grad_fragments<kBN>(acc, w, args, args.accumulate, cw, t);
    return;
  }
  if constexpr (T::boxed_out) {
    if (t == 0) bulk_wait_group_read();
  }  // the last tile's stores have left
  // Both warpgroups are done with the stages (a block of one tile stages its output there) and
  // with the last tile's staged output (a persistent block).
  named_barrier(k_consumer_barrier, k_consumer_threads);
  if constexpr (T::weight_grad) {
    auto* tile = reinterpret_cast<float*>(smem);
    stage_accumulators<float, kBN, false>(smem, acc, cw, t);
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
    stage_accumulators<__nv_bfloat16, kBN, true>(smem, acc, cw, t);
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
          *reinterpret_cast<uint4*>(y + row * s.n + col) =
              *reinterpret_cast<const uint4*>(smem + staged_offset<2>(r, c));
        }
      }
    }
  }
}

// The k-slices of a tile: the inner dimension (forward) or the expert's rows (weight gradient).
template <class T>
__device__ __forceinline__ int k_slices(const Work& w, const Args& args) {
  return !T::weight_grad ? static_cast<int>((args.shape.k + k_bk - 1) / k_bk)
                         : (w.row_end - w.row_begin + k_bk - 1) / k_bk;
}

// The loader's side of one tile: each k-slice into the next free stage of the ring.
template <class T>
__device__ __forceinline__ void load_tile(uint8_t* smem, uint64_t* full, uint64_t* empty, const CUtensorMap* map_a,
                                          const CUtensorMap* map_b, const Work& w, const Args& args, int& ring) {
  const int slices = k_slices<T>(w, args);
  for (int it = 0; it < slices; ++it, ++ring) {
    const int s = ring % T::stages;
    mbar_wait(&empty[s], ((ring / T::stages) & 1) ^ 1);
    uint8_t* a = smem + s * T::stage_bytes;
    load_stage<T>(a, a + T::a_bytes, &full[s], map_a, map_b, w, args, it);
  }
}

// The multiplying warpgroups' side of one tile: the k-slices from the ring, then the epilogue.
template <class T>
__device__ __forceinline__ void multiply_tile(uint8_t* smem, uint8_t* out_tile, const CUtensorMap* map_out,
                                              uint64_t* full, uint64_t* empty, const Work& w, const Args& args,
                                              int& ring) {
  constexpr int kBN = T::bn;
  const int t = static_cast<int>(threadIdx.x), cw = t / 128;
  float acc[kBN / 2];
#pragma unroll
  for (int j = 0; j < kBN / 2; ++j) acc[j] = 0.f;
  fence_registers(acc);
  const int slices = k_slices<T>(w, args);
  for (int it = 0; it < slices; ++it, ++ring) {
    const int s = ring % T::stages;
    mbar_wait(&full[s], (ring / T::stages) & 1);
    uint8_t* a = smem + s * T::stage_bytes;
    if constexpr (T::weight_grad) {
      const int valid = w.row_end - w.row_begin - it * k_bk;
      if (valid < k_bk) zero_tail_rows<kBN>(a, valid, t);
    }
    fence_registers(acc);
    wgmma_fence();
    mma_stage<T>(acc, a, a + T::a_bytes, cw);
    wgmma_commit();
    wgmma_wait<1>();
    fence_registers(acc);
    if (it > 0 && t % 128 == 0) mbar_arrive(&empty[(ring - 1) % T::stages]);
  }
  wgmma_wait<0>();
  fence_registers(acc);
  if (slices > 0 && t % 128 == 0) mbar_arrive(&empty[(ring - 1) % T::stages]);  // the tile's last stage
  epilogue<T>(out_tile, map_out, acc, w, args, cw, t);
}

template <class T>
__global__ void __launch_bounds__(k_threads, T::blocks_per_sm)
    grouped_gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                             const __grid_constant__ CUtensorMap map_out, Args args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBN = T::bn;
  constexpr bool forward = !T::weight_grad;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* out_tile = smem + T::out_offset;
  auto* full = reinterpret_cast<uint64_t*>(smem + T::barrier_offset);
  uint64_t* empty = full + T::stages;
  auto* schedule_words = reinterpret_cast<int32_t*>(empty + T::stages);
  const Schedule sch{schedule_words, schedule_words + args.shape.num_experts + 1};
  // The persistent weight gradient's expert order (sort_experts_by_rows).
  int32_t* const expert_order = T::sorted_experts ? schedule_words : nullptr;
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::stages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 2);  // one arrival per consumer warpgroup
    }
    fence_barrier_init();
  }
  if (forward && threadIdx.x < k_warp) build_schedule(args, sch, static_cast<int>(threadIdx.x));
  // The sort counts the experts' rows in the ring's memory: the loader fills it only after the barrier below.
  if constexpr (T::sorted_experts) sort_experts_by_rows(args, expert_order, reinterpret_cast<int32_t*>(smem));
  __syncthreads();
  // The block's tiles: one in each round of gridDim.x tiles in a persistent grid (block_tile); a
  // block-per-tile grid (sized by a bound in the forward) has one tile or none each.
  const int64_t col_tiles = (args.shape.n + kBN - 1) / kBN;
  const int64_t tiles = forward ? sch.tile_start[args.shape.num_experts] * col_tiles : weight_grad_tiles<kBN>(args.shape);
  auto work = [&](int64_t tile, Work& w) {
    if (tile >= tiles) return false;
    if constexpr (forward) {
      return forward_work<kBN>(args, sch, tile, col_tiles, w);
    } else {
      return weight_grad_work<kBN>(args, expert_order, tile, w);
    }
  };
  // Both sides count the k-slices they have passed through the ring (`ring`), over all tiles.
  Work w{};
  int ring = 0;
  if (threadIdx.x >= k_consumer_threads) {  // the loader warp
    if (threadIdx.x == k_consumer_threads) {
      if constexpr (T::persistent) {
        for (int i = 0; static_cast<int64_t>(i) * gridDim.x < tiles; ++i) {
          if (work(block_tile<T::sorted_experts>(i), w)) load_tile<T>(smem, full, empty, &map_a, &map_b, w, args, ring);
        }
      } else if (work(blockIdx.x, w)) {
        load_tile<T>(smem, full, empty, &map_a, &map_b, w, args, ring);
      }
    }
    return;
  }
  if constexpr (T::persistent) {
    for (int i = 0; static_cast<int64_t>(i) * gridDim.x < tiles; ++i) {
      if (work(block_tile<T::sorted_experts>(i), w)) {
        multiply_tile<T>(smem, out_tile, &map_out, full, empty, w, args, ring);
      }
    }
  } else if (work(blockIdx.x, w)) {
    multiply_tile<T>(smem, out_tile, &map_out, full, empty, w, args, ring);
  }
  if (T::boxed_out && threadIdx.x == 0) bulk_wait_group();  // the bulk stores are complete before the block ends
#endif
}

}  // namespace

}  // namespace moe::cuda::sm90

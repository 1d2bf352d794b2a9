// The Hopper weight gradient for short reductions, dw[e] (+)= x_e^T @ dy_e where the experts hold
// few rows (Switch-like: about 256): a persistent block keeps dy_e's rows for 256 columns of dw in
// shared memory (up to 320 rows, 160 KB) and streams x_e's 128-row tiles of dw past them through a
// ring, so that dy is read once a unit of up to 8 row tiles instead of once a tile. Reads per 128 x 256
// output tile fall from 48 KB a 64-row slice to 16 KB plus a share of the resident dy. An expert with
// more rows takes them in chunks of 320: the first chunk stores (or adds), the next ones add. Included
// by grouped_gemm_sm90.cu after grouped_gemm_sm90_kernel.cuh, whose types and helpers it uses.
// Choices: docs/decisions.md, "Issue 14, the Hopper grouped GEMM" and "The weight gradient with `dy`
// resident, and what part 12 measured and did not take".
#pragma once

#include "kernels/cuda/grouped_gemm_sm90_kernel.cuh"

namespace moe::cuda::sm90 {

namespace {

// The multiplying side's tile: 128 rows of x_e^T, 256 columns of dy_e, both MN-major (mma_stage).
using ResidentTile = Tile<Mode::weight_grad, 256, true>;

struct Resident {
  static constexpr int bn = ResidentTile::bn;
  static constexpr int max_slices = 5;                          // rows of dy resident: 5 x 64 = 320
  static constexpr int chunk_rows = max_slices * k_bk;
  static constexpr int row_tiles_per_unit = 8;                  // dw row tiles a unit walks past one dy
  static constexpr int stages = 4;                              // the x ring
  static constexpr int a_bytes = ResidentTile::a_bytes;         // a 64-row slice of 128 columns of x: 16 KB
  static constexpr int b_slice_bytes = ResidentTile::b_bytes;   // a 64-row slice of 256 columns of dy: 32 KB
  static constexpr int ring_offset = max_slices * b_slice_bytes;           // dy first (160 KB), then the ring
  static constexpr int barrier_offset = ring_offset + stages * a_bytes;    // 224 KB
  // full[stages], empty[stages], dy_full[max_slices] (a barrier a slice; chunks of fewer slices leave
  // the last ones idle), dy_empty
  static constexpr int smem_bytes = 1024 + barrier_offset + (2 * stages + max_slices + 1) * 8;
  static_assert(smem_bytes <= k_max_smem, "shared memory per block");
  // The barriers, at fixed offsets from the 1024-aligned base (recomputed where used: registers are short).
  __device__ static uint64_t* full(uint8_t* smem) { return reinterpret_cast<uint64_t*>(smem + barrier_offset); }
  __device__ static uint64_t* empty(uint8_t* smem) { return full(smem) + stages; }
  __device__ static uint64_t* dy_full(uint8_t* smem) { return empty(smem) + stages; }
  __device__ static uint64_t* dy_empty(uint8_t* smem) { return dy_full(smem) + max_slices; }
};

// A unit of work: an expert, 256 columns of dw from n0, and up to row_tiles_per_unit row tiles of
// dw from m_first (tiles of 128 rows).
struct ResidentUnit {
  int32_t expert, row_begin, row_end, n0, m_first, m_count;
};

// How the units tile one expert's dw: row tiles of 128, groups of row_tiles_per_unit of them, and
// blocks of 256 columns. Shared by the launch (how many blocks) and the kernel (which unit is which).
struct ResidentLayout {
  int32_t row_tiles, groups, col_blocks;
  __host__ __device__ explicit ResidentLayout(const kernels::GroupedGemmShape& s)
      : row_tiles(static_cast<int32_t>((s.k + k_bm - 1) / k_bm)),
        groups((row_tiles + Resident::row_tiles_per_unit - 1) / Resident::row_tiles_per_unit),
        col_blocks(static_cast<int32_t>((s.n + Resident::bn - 1) / Resident::bn)) {}
  __host__ __device__ int64_t units(int64_t num_experts) const {
    return num_experts * col_blocks * static_cast<int64_t>(groups);
  }
};

// Unit `index`, expert-major (an expert's units share its rows of x in L2), then column block, then
// group of row tiles; false when there is nothing to do (no rows, adding). 32-bit: the launch
// checks that the units number at most INT32_MAX.
__device__ bool resident_unit(const Args& args, int32_t index, ResidentUnit& u) {
  const ResidentLayout l(args.shape);
  const int32_t row_tiles = l.row_tiles, groups = l.groups, col_blocks = l.col_blocks;
  const int32_t group = index % groups, col_block = (index / groups) % col_blocks;
  u.expert = index / (groups * col_blocks);
  const int2 r = expert_rows(args, u.expert);
  u.row_begin = r.x;
  u.row_end = r.y;
  u.n0 = col_block * Resident::bn;
  u.m_first = group * Resident::row_tiles_per_unit;
  u.m_count = min(Resident::row_tiles_per_unit, row_tiles - u.m_first);
  return u.row_end > u.row_begin || !args.accumulate;
}

// The unit's chunks of at most chunk_rows rows: one with no rows for an expert with none (its dw
// is stored as zeros).
__device__ __forceinline__ int resident_chunks(const ResidentUnit& u) {
  return max(1, (u.row_end - u.row_begin + Resident::chunk_rows - 1) / Resident::chunk_rows);
}
__device__ __forceinline__ int chunk_row_count(const ResidentUnit& u, int c) {
  return min(Resident::chunk_rows, u.row_end - u.row_begin - c * Resident::chunk_rows);
}
// The k_bk-row slices of a chunk of `rows` rows (the last one partly past the expert's end).
__device__ __forceinline__ int chunk_slices(int rows) { return (rows + k_bk - 1) / k_bk; }

// The loader: for each chunk, dy's slices into the resident buffer once both warpgroups are done
// with the last chunk (a barrier a slice), and x's slices of each row tile into the ring. dy_uses:
// the chunks loaded, dy_empty's phases.
__device__ void resident_load_unit(uint8_t* smem, const CUtensorMap* map_x, const CUtensorMap* map_dy,
                                   const ResidentUnit& u, int& ring, int& dy_uses) {
  uint64_t *full = Resident::full(smem), *empty = Resident::empty(smem), *dy_full = Resident::dy_full(smem);
  uint64_t* dy_empty = Resident::dy_empty(smem);
  for (int c = 0; c < resident_chunks(u); ++c) {
    const int rows = chunk_row_count(u, c), slices = chunk_slices(rows);
    if (slices == 0) continue;
    const int32_t r0 = u.row_begin + c * Resident::chunk_rows;
    // x slice i of the chunk (row tile i / slices, slice i % slices) into the next stage of the ring.
    auto load_x = [&](int i) {
      const int s = ring % Resident::stages, it = i % slices;
      const int32_t m0 = (u.m_first + i / slices) * k_bm;
      mbar_wait(&empty[s], ((ring / Resident::stages) & 1) ^ 1);
      uint8_t* a = smem + Resident::ring_offset + s * Resident::a_bytes;
      mbar_arrive_expect_tx(&full[s], Resident::a_bytes);
#pragma unroll
      for (int h = 0; h < k_bm / k_box; ++h) tma_load_2d(a + h * k_box_bytes, map_x, &full[s], m0 + h * k_box, r0 + it * k_bk);
      ++ring;
    };
    // The ring's first slices go before the wait for the last chunk's dy to be done with: the
    // warpgroups free their stages as they finish it, so the ring does not run dry across chunks.
    const int x_slices = u.m_count * slices, early = min(x_slices, Resident::stages);
    for (int i = 0; i < early; ++i) load_x(i);
    mbar_wait(dy_empty, (dy_uses & 1) ^ 1);
    for (int it = 0; it < slices; ++it) {
      mbar_arrive_expect_tx(&dy_full[it], Resident::b_slice_bytes);
#pragma unroll
      for (int h = 0; h < Resident::bn / k_box; ++h) {
        tma_load_2d(smem + it * Resident::b_slice_bytes + h * k_box_bytes, map_dy, &dy_full[it], u.n0 + h * k_box,
                    r0 + it * k_bk);
      }
    }
    ++dy_uses;
    for (int i = early; i < x_slices; ++i) load_x(i);
  }
}

// The multiplying warpgroups: for each chunk, each row tile's slices against the resident dy,
// written from the registers (added after the first chunk). The chunk's dy slices are waited for
// first (waiting inside the first row tile's loop costs registers, which spill); the rows past the
// expert's end are zeroed in the chunk's last dy slice (once) and in each last x slice.
// dy_parity: a bit a dy slice barrier, flipped as the loader's uses of it are.
__device__ void resident_multiply_unit(uint8_t* smem, const ResidentUnit& u, const Args& args, int& ring,
                                       int& dy_parity) {
  constexpr int kBN = Resident::bn;
  const int t = static_cast<int>(threadIdx.x), cw = t / 128;
  // The few scalars the loops need (registers are short beside the 128 accumulators).
  const int chunks = resident_chunks(u);
  const int32_t m_begin = u.m_first * k_bm, m_end = m_begin + u.m_count * k_bm;
#pragma unroll 1
  for (int c = 0; c < chunks; ++c) {
    const int rows = chunk_row_count(u, c), slices = chunk_slices(rows);
    const int valid_last = rows - (slices - 1) * k_bk;  // rows of the chunk's last slice
    for (int it = 0; it < slices; ++it) mbar_wait(&Resident::dy_full(smem)[it], (dy_parity >> it) & 1);
    if (slices > 0 && valid_last < k_bk) {
      zero_box_rows<kBN / k_box>(smem + (slices - 1) * Resident::b_slice_bytes, valid_last, t);
    }
#pragma unroll 1
    for (int32_t m0 = m_begin; m0 < m_end; m0 += k_bm) {
      float acc[kBN / 2];
#pragma unroll
      for (int j = 0; j < kBN / 2; ++j) acc[j] = 0.f;
      fence_registers(acc);
      for (int it = 0; it < slices; ++it, ++ring) {
        const int s = ring % Resident::stages;
        mbar_wait(&Resident::full(smem)[s], (ring / Resident::stages) & 1);
        uint8_t* a = smem + Resident::ring_offset + s * Resident::a_bytes;
        uint8_t* b = smem + it * Resident::b_slice_bytes;
        if (it == slices - 1 && valid_last < k_bk) zero_box_rows<k_bm / k_box>(a, valid_last, t);
        fence_registers(acc);
        wgmma_fence();
        mma_stage<ResidentTile>(acc, a, b, cw);
        wgmma_commit();
        wgmma_wait<1>();
        fence_registers(acc);
        if (it > 0 && t % 128 == 0) mbar_arrive(&Resident::empty(smem)[(ring - 1) % Resident::stages]);
      }
      wgmma_wait<0>();
      fence_registers(acc);
      if (slices > 0 && t % 128 == 0) mbar_arrive(&Resident::empty(smem)[(ring - 1) % Resident::stages]);
      const Work w{u.expert, 0, 0, u.n0, m0};  // the fragments' writer reads expert, n0, m0
      write_weight_grad_fragments<kBN>(acc, w, args, args.accumulate || c > 0, cw, t);
    }
    if (slices > 0 && t % 128 == 0) mbar_arrive(Resident::dy_empty(smem));  // this warpgroup's MMAs on the chunk are complete
    dy_parity ^= (1 << slices) - 1;
  }
}

__global__ void __launch_bounds__(k_threads, 1)
    grouped_weight_grad_resident_kernel(const __grid_constant__ CUtensorMap map_x,
                                        const __grid_constant__ CUtensorMap map_dy, Args args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  if (threadIdx.x == 0) {
    uint64_t *full = Resident::full(smem), *empty = Resident::empty(smem), *dy_full = Resident::dy_full(smem);
    for (int s = 0; s < Resident::stages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 2);  // one arrival per consumer warpgroup
    }
    for (int it = 0; it < Resident::max_slices; ++it) mbar_init(&dy_full[it], 1);
    mbar_init(Resident::dy_empty(smem), 2);
    fence_barrier_init();
  }
  __syncthreads();
  const auto units = static_cast<int32_t>(ResidentLayout(args.shape).units(args.shape.num_experts));
  // Both sides count the x slices through the ring (`ring`); the loader counts the chunks of dy
  // (`dy_uses`, dy_empty's phases), the warpgroups each dy slice barrier's phase (`dy_parity`).
  ResidentUnit u{};
  int ring = 0, dy_uses = 0, dy_parity = 0;
  if (threadIdx.x >= k_consumer_threads) {
    if (threadIdx.x == k_consumer_threads) {
      for (int32_t i = static_cast<int32_t>(blockIdx.x); i < units; i += static_cast<int32_t>(gridDim.x)) {
        if (resident_unit(args, i, u)) {
          resident_load_unit(smem, &map_x, &map_dy, u, ring, dy_uses);
        }
      }
    }
    return;
  }
  for (int32_t i = static_cast<int32_t>(blockIdx.x); i < units; i += static_cast<int32_t>(gridDim.x)) {
    if (resident_unit(args, i, u)) resident_multiply_unit(smem, u, args, ring, dy_parity);
  }
#endif
}

}  // namespace

}  // namespace moe::cuda::sm90

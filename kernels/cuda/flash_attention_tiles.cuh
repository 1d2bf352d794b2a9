// Shared pieces of the tensor-core flash-attention kernels: parameters, swizzled shared-memory
// tiles, cp.async tile loads, MMA fragment loads. Compiles under nvcc and, for the emulation test
// (tests/kernels/test_flash_attention_emulated.cpp), on the host after tests/kernels/warp_emulator.h.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#include "kernels/cuda/flash_attention_ptx.cuh"
#elif !defined(MOE_FLASH_EMULATED)
#error "flash attention kernels compile under nvcc, or on the host after tests/kernels/warp_emulator.h"
#endif

namespace moe::cuda::flash {

constexpr float k_log2e = 1.4426950408889634f;

// One launch. q[B*S, Hq*hd], k,v[B*Skv, Hkv*hd] (rows q_row / kv_row elements apart; Skv = kv_len,
// S except for cross-attention, which is non-causal without documents), out like q,
// lse[B,Hq,S] (natural log); backward: dout like q, delta[B,Hq,S] = rowsum(dout * out),
// dq_accum f32 like q (zeroed first, summed with atomics), dk, dv like k, v. doc_starts i32[B*S]
// (causal only; null = off): query i sees keys doc_starts[i] .. i, non-decreasing along a sequence.
struct Params {
  const bf16_bits* q = nullptr;
  const bf16_bits* k = nullptr;
  const bf16_bits* v = nullptr;
  bf16_bits* out = nullptr;
  float* lse = nullptr;
  const bf16_bits* dout = nullptr;
  const float* lse_in = nullptr;
  const float* delta = nullptr;
  float* dq_accum = nullptr;
  bf16_bits* dk = nullptr;
  bf16_bits* dv = nullptr;
  const int32_t* doc_starts = nullptr;
  int batch = 0, seq_len = 0, num_heads = 0, num_kv_heads = 0, group = 1;
  int kv_len = 0;  // keys/values per sequence
  int64_t q_row = 0, kv_row = 0;
  float scale = 1.0f;       // 1 / sqrt(hd)
  float scale_log2 = 1.0f;  // scale * log2(e): scores go through exp2
  bool causal = true;
};

// The sizes of a launch (pointers left null). Sizes are validated by the caller.
// kv_seq_len: keys per sequence (0 = seq_len).
inline Params make_params(int batch, int seq_len, int num_heads, int num_kv_heads, int head_dim, bool causal,
                          int kv_seq_len = 0) {
  Params p;
  p.batch = batch;
  p.seq_len = seq_len;
  p.kv_len = kv_seq_len != 0 ? kv_seq_len : seq_len;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.group = num_heads / num_kv_heads;
  p.q_row = static_cast<int64_t>(num_heads) * head_dim;
  p.kv_row = static_cast<int64_t>(num_kv_heads) * head_dim;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  p.scale_log2 = p.scale * k_log2e;
  p.causal = causal;
  return p;
}

// Host and device (the kernels build with --expt-relaxed-constexpr).
constexpr int ceil_div_int(int a, int b) { return (a + b - 1) / b; }
constexpr int min_int(int a, int b) { return a < b ? a : b; }

// The first key query i of sequence batch_index may see: its document's first token (0 without
// document masking, and for rows past the sequence).
MOE_FLASH_FN int doc_start_of(const Params& p, int batch_index, int i) {
  return p.doc_starts != nullptr && i < p.seq_len ? p.doc_starts[static_cast<int64_t>(batch_index) * p.seq_len + i]
                                                  : 0;
}

// Element offset of (row, col) in a [rows][kCols] bf16 tile whose 16-byte chunks are XOR-swizzled
// by row % 8: the 8 rows an ldmatrix (or a column of 4-byte stores) touches at one logical chunk
// land in 8 different bank groups. kCols is a multiple of 64 (rows of >= 8 chunks).
template <int kCols>
MOE_FLASH_FN int swizzle(int row, int col) {
  static_assert(kCols % 64 == 0, "swizzled tiles need rows of at least 8 16-byte chunks");
  return row * kCols + (((col >> 3) ^ (row & 7)) << 3) + (col & 7);
}

// Rows first_row .. first_row + kRows - 1 of a [seq_len, ...] slice (row r at src + r * row_stride,
// kCols contiguous bf16) into a swizzled [kRows][kCols] tile; rows at or beyond seq_len are zeros.
// All kThreads threads take part; one cp.async group is left open (the caller commits).
template <int kRows, int kCols, int kThreads>
MOE_FLASH_FN void load_tile_async(bf16_bits* tile, const bf16_bits* src, int64_t row_stride, int first_row,
                                  int seq_len, int tid) {
  constexpr int k_chunks_per_row = kCols / 8;
  constexpr int k_chunks = kRows * k_chunks_per_row;
  static_assert(k_chunks % kThreads == 0, "tile chunks must split evenly over the block");
  MOE_FLASH_UNROLL
  for (int i = 0; i < k_chunks / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int r = c / k_chunks_per_row, chunk = c % k_chunks_per_row;
    const int row = first_row + r;
    const bool valid = row < seq_len;
    const bf16_bits* from = src + static_cast<int64_t>(valid ? row : 0) * row_stride + chunk * 8;
    cp_async_16(tile + swizzle<kCols>(r, chunk * 8), from, valid);
  }
}

// MMA operands from swizzled tiles (m16n8k16, see flash_attention_ptx.cuh for the layouts).
// A (16 x 16) from a tile stored [m][k]: rows row0.., columns col0...
template <int kCols>
MOE_FLASH_FN void load_a(uint32_t (&a)[4], const bf16_bits* tile, int row0, int col0, int lane) {
  ldsm_x4(a, tile + swizzle<kCols>(row0 + (lane & 15), col0 + ((lane >> 4) << 3)));
}
// A (16 x 16) from a tile stored transposed, [k][m]: k rows k0.., m columns m0...
template <int kCols>
MOE_FLASH_FN void load_a_transposed(uint32_t (&a)[4], const bf16_bits* tile, int k0, int m0, int lane) {
  ldsm_x4_trans(a, tile + swizzle<kCols>(k0 + (lane & 7) + ((lane >> 4) << 3), m0 + (((lane >> 3) & 1) << 3)));
}
// Two B operands (k16 x n8: n0..n0+7 in b[0..1], n0+8..n0+15 in b[2..3]) from a tile stored
// [n][k] (K for Q K^T): no transpose.
template <int kCols>
MOE_FLASH_FN void load_b_nk(uint32_t (&b)[4], const bf16_bits* tile, int n0, int k0, int lane) {
  ldsm_x4(b, tile + swizzle<kCols>(n0 + (lane & 7) + ((lane >> 4) << 3), k0 + (((lane >> 3) & 1) << 3)));
}
// The same two B operands from a tile stored [k][n] (V for P V): transposing load.
template <int kCols>
MOE_FLASH_FN void load_b_kn(uint32_t (&b)[4], const bf16_bits* tile, int k0, int n0, int lane) {
  ldsm_x4_trans(b, tile + swizzle<kCols>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), n0 + ((lane >> 4) << 3)));
}

// The A operand of a k16 step from two accumulator tiles (columns 16j..16j+7 in lo,
// 16j+8..16j+15 in hi): the C layout of m16n8 matches the A layout of m16k16 register for register.
MOE_FLASH_FN void pack_a_from_c(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack_bf16x2(lo[0], lo[1]);
  a[1] = pack_bf16x2(lo[2], lo[3]);
  a[2] = pack_bf16x2(hi[0], hi[1]);
  a[3] = pack_bf16x2(hi[2], hi[3]);
}

// Every float of a (multi-dimensional) register array set to 0.
template <class Array>
MOE_FLASH_FN void zero_fill(Array& a) {
  float* f = reinterpret_cast<float*>(&a);
  MOE_FLASH_UNROLL
  for (int i = 0; i < static_cast<int>(sizeof(Array) / sizeof(float)); ++i) f[i] = 0.0f;
}

// Warp-level GEMMs on m16n8k16 tiles. A warp owns kMTiles row tiles of 16 and kNTiles column
// tiles of 8 of its accumulator acc[mt][nt] (the C layout).

// acc += A B^T over k = 0 .. kK: A rows a_row0 + 16 mt .. of a [.][kACols] tile, B rows 0 ..
// 8 kNTiles of a [.][kBCols] tile, both with k contiguous (Q K^T, K Q^T, V dO^T).
template <int kK, int kACols, int kBCols, int kMTiles, int kNTiles>
MOE_FLASH_FN void gemm_abt(float (&acc)[kMTiles][kNTiles][4], const bf16_bits* a_tile, int a_row0,
                           const bf16_bits* b_tile, int lane) {
  static_assert(kNTiles % 2 == 0 && kK % 16 == 0, "B is loaded 16 rows at a time");
  MOE_FLASH_UNROLL_2  // fully unrolled, ptxas loads every fragment early and spills
  for (int kt = 0; kt < kK / 16; ++kt) {
    uint32_t a[kMTiles][4];
    MOE_FLASH_UNROLL
    for (int mt = 0; mt < kMTiles; ++mt) load_a<kACols>(a[mt], a_tile, a_row0 + mt * 16, kt * 16, lane);
    MOE_FLASH_UNROLL
    for (int np = 0; np < kNTiles / 2; ++np) {
      uint32_t b[4];
      load_b_nk<kBCols>(b, b_tile, np * 16, kt * 16, lane);
      MOE_FLASH_UNROLL
      for (int mt = 0; mt < kMTiles; ++mt) {
        mma_bf16_16816(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma_bf16_16816(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// acc += P B: P in registers in the accumulator layout (its column tiles 2j, 2j + 1 are k step j),
// rounded to bf16; B a [k][kBCols] tile, columns b_col0 .. + 8 kNTiles (P V, P^T dO, dS^T Q).
template <int kBCols, int kMTiles, int kKTiles, int kNTiles>
MOE_FLASH_FN void gemm_pb(float (&acc)[kMTiles][kNTiles][4], const float (&p)[kMTiles][kKTiles][4],
                          const bf16_bits* b_tile, int b_col0, int lane) {
  static_assert(kNTiles % 2 == 0 && kKTiles % 2 == 0, "k and n in steps of 16");
  MOE_FLASH_UNROLL
  for (int j = 0; j < kKTiles / 2; ++j) {
    uint32_t pa[kMTiles][4];
    MOE_FLASH_UNROLL
    for (int mt = 0; mt < kMTiles; ++mt) pack_a_from_c(pa[mt], p[mt][2 * j], p[mt][2 * j + 1]);
    MOE_FLASH_UNROLL
    for (int np = 0; np < kNTiles / 2; ++np) {
      uint32_t b[4];
      load_b_kn<kBCols>(b, b_tile, j * 16, b_col0 + np * 16, lane);
      MOE_FLASH_UNROLL
      for (int mt = 0; mt < kMTiles; ++mt) {
        mma_bf16_16816(acc[mt][2 * np], pa[mt], b[0], b[1]);
        mma_bf16_16816(acc[mt][2 * np + 1], pa[mt], b[2], b[3]);
      }
    }
  }
}

// Bytes of a [rows][cols] bf16 tile.
constexpr int tile_bytes(int rows, int cols) { return rows * cols * 2; }

// Where one (batch, head) slice of a [B*S, heads*hd] tensor starts.
MOE_FLASH_FN int64_t slice_offset(int batch_index, int seq_len, int64_t row, int head, int head_dim) {
  return static_cast<int64_t>(batch_index) * seq_len * row + static_cast<int64_t>(head) * head_dim;
}

}  // namespace moe::cuda::flash

// The flash-attention forward of one block of query rows (FlashAttention-2): S = Q K^T and
// O += P V on tensor cores, online softmax in fp32 registers, K/V tiles double-buffered by cp.async.
#pragma once

#include "kernels/cuda/flash_attention_tiles.cuh"

namespace moe::cuda::flash {

// kBlockM query rows per block (kMTiles 16-row MMA tiles per warp), kBlockN keys per K/V tile.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_>
struct ForwardTraits {
  static constexpr int kHeadDim = kHeadDim_, kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBlockM / (16 * kWarps);
  static constexpr int kSmemBytes = tile_bytes(kBlockM, kHeadDim) + 4 * tile_bytes(kBlockN, kHeadDim);
  static_assert(kMTiles >= 1 && kMTiles * 16 * kWarps == kBlockM, "kBlockM = 16 x warps x tiles per warp");
  static_assert(kBlockN % 16 == 0 && kHeadDim % 64 == 0, "key tiles of 16, head dims of 64s");
};

// The configurations the launcher instantiates: 4 warps of 32 query rows (FlashAttention-2's
// layout), and the widest key tiles ptxas compiles without spills at 255 registers (FA2's 128 and
// 64 keys spill here: ptxas -v, CUDA 13, sm_90).
using ForwardHd64 = ForwardTraits<64, 128, 64, 4>;
using ForwardHd128 = ForwardTraits<128, 128, 32, 4>;

// Query blocks of one (head, batch); the grid is (Hq, B, query blocks) (longest_first_grid).
template <class T>
int forward_query_blocks(const Params& p) {
  return ceil_div_int(p.seq_len, T::kBlockM);
}

namespace detail {

// Scores that must not count become -inf: keys beyond the sequence (kv_len keys), under the causal mask keys
// after the query, under document masking keys before the query's document (its start read here,
// on the tiles that need a mask only: registers kept for it spilled). Row r of tile mt holds
// queries row0 + 16 mt + g (+8 for half 1).
template <int kMTiles, int kNTiles>
MOE_FLASH_FN void mask_scores(float (&s)[kMTiles][kNTiles][4], int row0, int key0, int batch_index, int lane,
                              const Params& p) {
  MOE_FLASH_UNROLL
  for (int mt = 0; mt < kMTiles; ++mt) {
    MOE_FLASH_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int i = row0 + mt * 16 + (lane >> 2) + (e >> 1) * 8;
      const int lo = doc_start_of(p, batch_index, i);
      MOE_FLASH_UNROLL
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int j = key0 + nt * 8 + 2 * (lane & 3) + (e & 1);
        if (j >= p.kv_len || (p.causal && j > i) || j < lo) s[mt][nt][e] = -INFINITY;
      }
    }
  }
}

// Online softmax over one K/V tile: row maxima (over the 4 lanes sharing a row), rescaling of the
// running sums and of the output accumulator, and s replaced by exp2(scale_log2 (s - max)).
// row_sum stays a per-lane partial sum (reduced over the 4 lanes once, at the end).
template <int kMTiles, int kNTiles, int kDTiles>
MOE_FLASH_FN void softmax_update(float (&s)[kMTiles][kNTiles][4], float (&acc)[kMTiles][kDTiles][4],
                                 float (&row_max)[kMTiles][2], float (&row_sum)[kMTiles][2], float scale_log2) {
  MOE_FLASH_UNROLL
  for (int mt = 0; mt < kMTiles; ++mt) {
    MOE_FLASH_UNROLL
    for (int half = 0; half < 2; ++half) {
      float mx = row_max[mt][half];
      MOE_FLASH_UNROLL
      for (int nt = 0; nt < kNTiles; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
      mx = fmaxf(mx, shfl_xor(mx, 1));
      mx = fmaxf(mx, shfl_xor(mx, 2));
      // A row with nothing visible yet keeps max -inf: shift by 0 so exp2(-inf - 0) = 0, not NaN.
      const float shift = mx == -INFINITY ? 0.0f : mx * scale_log2;
      const float corr = fast_exp2(row_max[mt][half] * scale_log2 - shift);
      row_max[mt][half] = mx;
      float sum = 0.0f;
      MOE_FLASH_UNROLL
      for (int nt = 0; nt < kNTiles; ++nt) {
        MOE_FLASH_UNROLL
        for (int c = 0; c < 2; ++c) {
          float& x = s[mt][nt][2 * half + c];
          x = fast_exp2(fmaf(x, scale_log2, -shift));
          sum += x;
        }
      }
      row_sum[mt][half] = row_sum[mt][half] * corr + sum;
      MOE_FLASH_UNROLL
      for (int dt = 0; dt < kDTiles; ++dt) {
        acc[mt][dt][2 * half] *= corr;
        acc[mt][dt][2 * half + 1] *= corr;
      }
    }
  }
}

// out rows = acc / row sum (bf16), lse = max * scale + ln(sum), for rows inside the sequence.
template <class T>
MOE_FLASH_FN void store_forward(const Params& p, float (&acc)[T::kMTiles][T::kHeadDim / 8][4],
                                const float (&row_max)[T::kMTiles][2], const float (&row_sum)[T::kMTiles][2],
                                int row0, int head, int batch_index, int lane) {
  bf16_bits* out = p.out + slice_offset(batch_index, p.seq_len, p.q_row, head, T::kHeadDim);
  float* lse = p.lse + (static_cast<int64_t>(batch_index) * p.num_heads + head) * p.seq_len;
  MOE_FLASH_UNROLL
  for (int mt = 0; mt < T::kMTiles; ++mt) {
    MOE_FLASH_UNROLL
    for (int half = 0; half < 2; ++half) {
      float total = row_sum[mt][half];
      total += shfl_xor(total, 1);
      total += shfl_xor(total, 2);
      const int i = row0 + mt * 16 + (lane >> 2) + half * 8;
      if (i >= p.seq_len) continue;
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      bf16_bits* row = out + static_cast<int64_t>(i) * p.q_row + 2 * (lane & 3);
      MOE_FLASH_UNROLL
      for (int dt = 0; dt < T::kHeadDim / 8; ++dt) {
        *reinterpret_cast<uint32_t*>(row + dt * 8) =
            pack_bf16x2(acc[mt][dt][2 * half] * inv, acc[mt][dt][2 * half + 1] * inv);
      }
      if ((lane & 3) == 0) lse[i] = row_max[mt][half] * p.scale + logf(total);
    }
  }
}

}  // namespace detail

// One block: query rows q0 = m_block * kBlockM .. + kBlockM of `head` in sequence `batch_index`.
// Shared memory: Q [kBlockM][hd], K and V [2][kBlockN][hd] (bf16, swizzled).
template <class T>
MOE_FLASH_FN void forward_block(const Params& p, int m_block, int head, int batch_index, int tid, char* smem) {
  constexpr int D = T::kHeadDim, BM = T::kBlockM, BN = T::kBlockN, MT = T::kMTiles;
  constexpr int NT = BN / 8, DT = D / 8;
  bf16_bits* sq = reinterpret_cast<bf16_bits*>(smem);
  bf16_bits* sk = sq + BM * D;
  bf16_bits* sv = sk + 2 * BN * D;
  const int lane = tid & 31, warp = tid >> 5;
  const int q0 = m_block * BM, row0 = q0 + warp * MT * 16;
  const int kv_head = head / p.group;
  const bf16_bits* q = p.q + slice_offset(batch_index, p.seq_len, p.q_row, head, D);
  const bf16_bits* k = p.k + slice_offset(batch_index, p.kv_len, p.kv_row, kv_head, D);
  const bf16_bits* v = p.v + slice_offset(batch_index, p.kv_len, p.kv_row, kv_head, D);
  // Causal: keys beyond the block's last row are never visible, their tiles are skipped; so are
  // the tiles before the document of the block's first row (starts only grow along a sequence).
  const int key_end = p.causal ? min_int(q0 + BM, p.seq_len) : p.kv_len;
  const int num_tiles = ceil_div_int(key_end, BN);
  const int first_tile = doc_start_of(p, batch_index, q0) / BN;

  load_tile_async<BM, D, T::kThreads>(sq, q, p.q_row, q0, p.seq_len, tid);
  load_tile_async<BN, D, T::kThreads>(sk, k, p.kv_row, first_tile * BN, p.kv_len, tid);
  load_tile_async<BN, D, T::kThreads>(sv, v, p.kv_row, first_tile * BN, p.kv_len, tid);
  cp_async_commit();

  float acc[MT][DT][4], row_max[MT][2], row_sum[MT][2];
  zero_fill(acc);
  zero_fill(row_sum);
  MOE_FLASH_UNROLL
  for (int mt = 0; mt < MT; ++mt) row_max[mt][0] = row_max[mt][1] = -INFINITY;

  for (int n = first_tile; n < num_tiles; ++n) {
    const int buf = (n - first_tile) & 1;
    cp_async_wait<0>();  // tile n (and Q) landed for this thread ...
    sync_block();        // ... for every thread, and tile n - 1's buffer is free again
    if (n + 1 < num_tiles) {
      load_tile_async<BN, D, T::kThreads>(sk + (buf ^ 1) * BN * D, k, p.kv_row, (n + 1) * BN, p.kv_len, tid);
      load_tile_async<BN, D, T::kThreads>(sv + (buf ^ 1) * BN * D, v, p.kv_row, (n + 1) * BN, p.kv_len, tid);
    }
    cp_async_commit();
    const int key0 = n * BN;
    if (p.causal && key0 > row0 + MT * 16 - 1) continue;  // the whole tile is after this warp's rows
    // Document starts grow along a sequence: the warp's first row has the earliest, its last
    // row (inside the sequence) the latest.
    const bool docs = p.doc_starts != nullptr;
    if (docs && key0 + BN <= doc_start_of(p, batch_index, row0)) continue;  // before all their documents
    float s[MT][NT][4];
    zero_fill(s);
    gemm_abt<D, D, D>(s, sq, row0 - q0, sk + buf * BN * D, lane);
    if (key0 + BN > p.kv_len || (p.causal && key0 + BN - 1 > row0) ||
        (docs && key0 < doc_start_of(p, batch_index, min_int(row0 + MT * 16, p.seq_len) - 1))) {
      detail::mask_scores(s, row0, key0, batch_index, lane, p);
    }
    detail::softmax_update(s, acc, row_max, row_sum, p.scale_log2);
    gemm_pb<D>(acc, s, sv + buf * BN * D, 0, lane);
  }
  detail::store_forward<T>(p, acc, row_max, row_sum, row0, head, batch_index, lane);
}

// The block at (x, y, z) of the (Hq, B, query_blocks) grid: head x, sequence y, and the query
// blocks in reverse along z, so that each slice's last one (the most keys under the causal mask)
// starts first.
template <class T>
MOE_FLASH_FN void forward_grid_block(const Params& p, int x, int y, int z, int query_blocks, int tid, char* smem) {
  forward_block<T>(p, query_blocks - 1 - z, x, y, tid, smem);
}

}  // namespace moe::cuda::flash

// The flash-attention backward of one block of keys (FlashAttention-2): for every query block
// (and every query head of the kv group) S^T, dP^T, dV += P^T dO, dK += dS^T Q on tensor cores
// with dK, dV in registers, and dQ += dS K added to an fp32 buffer with atomics.
#pragma once

#include "kernels/cuda/flash_attention_tiles.cuh"

namespace moe::cuda::flash {

// kBlockN keys per block (kNTiles 16-key MMA tiles per warp), kBlockM query rows per step.
// dQ = dS K of a step is split over the warps: kBlockM / 16 row tiles, each over kDqWarps warps
// that take kDqCols columns of the head dim.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_>
struct BackwardTraits {
  static constexpr int kHeadDim = kHeadDim_, kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kNTiles = kBlockN / (16 * kWarps);
  static constexpr int kDqWarps = kWarps / (kBlockM / 16);
  static constexpr int kDqCols = kHeadDim / kDqWarps;
  // K, V [kBlockN][hd]; Q, dO [2][kBlockM][hd]; dS^T [kBlockN][kBlockM]; lse, delta f32 and the
  // document starts i32 [2][kBlockM].
  static constexpr int kSmemBytes = 2 * tile_bytes(kBlockN, kHeadDim) + 4 * tile_bytes(kBlockM, kHeadDim) +
                                    tile_bytes(kBlockN, kBlockM) + 6 * kBlockM * 4;
  static_assert(kNTiles >= 1 && kNTiles * 16 * kWarps == kBlockN, "kBlockN = 16 x warps x tiles per warp");
  static_assert(kBlockM % 64 == 0 && kHeadDim % 64 == 0, "query steps and head dims of 64s");
  static_assert(kDqWarps >= 1 && kDqWarps * (kBlockM / 16) == kWarps && kDqCols % 16 == 0,
                "the dQ tile must split evenly over the warps");
};

// The configurations the launcher instantiates: 8 warps of 16 keys, 64 query rows per step
// (FlashAttention-2's 64 x 128 tiles; spill-free at 255 registers for both head dims).
using BackwardHd64 = BackwardTraits<64, 64, 128, 8>;
using BackwardHd128 = BackwardTraits<128, 64, 128, 8>;

// Key blocks of one (kv head, batch); the grid is (Hkv, B, key blocks) (longest_first_grid).
template <class T>
int backward_key_blocks(const Params& p) {
  return ceil_div_int(p.kv_len, T::kBlockN);
}

namespace detail {

// Shared-memory layout of the backward block.
template <class T>
struct BackwardSmem {
  bf16_bits *k, *v, *q, *dout, *ds;
  float *lse, *delta;
  // The document start of each query row (document masking; zeros when off), after delta: computed
  // where used, not held (a pointer more spilled the head-dim 128 kernel).
  MOE_FLASH_FN int32_t* doc() const { return reinterpret_cast<int32_t*>(delta + 2 * T::kBlockM); }
  MOE_FLASH_FN explicit BackwardSmem(char* smem) {
    constexpr int D = T::kHeadDim, BM = T::kBlockM, BN = T::kBlockN;
    k = reinterpret_cast<bf16_bits*>(smem);
    v = k + BN * D;
    q = v + BN * D;
    dout = q + 2 * BM * D;
    ds = dout + 2 * BM * D;
    lse = reinterpret_cast<float*>(ds + BN * BM);
    delta = lse + 2 * BM;
  }
};

// Q and dO tiles of query rows q0.. of `head`, with their lse and delta, into buffer `buf`, all by
// cp.async (the group is left open). Rows past the sequence are zeros: Q, dO = 0 make their P
// harmless (dV += P^T 0, dS = P (0 - 0)), and their dQ is never stored.
template <class T>
MOE_FLASH_FN void load_query_step(const Params& p, const BackwardSmem<T>& sm, int buf, int head, int q0,
                                  int batch_index, int tid) {
  constexpr int D = T::kHeadDim, BM = T::kBlockM;
  const int64_t off = slice_offset(batch_index, p.seq_len, p.q_row, head, D);
  load_tile_async<BM, D, T::kThreads>(sm.q + buf * BM * D, p.q + off, p.q_row, q0, p.seq_len, tid);
  load_tile_async<BM, D, T::kThreads>(sm.dout + buf * BM * D, p.dout + off, p.q_row, q0, p.seq_len, tid);
  const int64_t stat = (static_cast<int64_t>(batch_index) * p.num_heads + head) * p.seq_len;
  static_assert(BM <= T::kThreads, "one thread per row statistic");
  if (tid < BM) {
    const int i = q0 + tid;
    const bool valid = i < p.seq_len;
    cp_async_4(sm.lse + buf * BM + tid, p.lse_in + stat + (valid ? i : 0), valid);
    cp_async_4(sm.delta + buf * BM + tid, p.delta + stat + (valid ? i : 0), valid);
    if (p.doc_starts != nullptr) {
      const int32_t* starts = p.doc_starts + static_cast<int64_t>(batch_index) * p.seq_len;
      cp_async_4(sm.doc() + buf * BM + tid, starts + (valid ? i : 0), valid);
    } else {
      sm.doc()[buf * BM + tid] = 0;
    }
  }
}

// P^T = exp(scale s - lse) = exp2(scale_log2 s - log2(e) lse), 0 where masked (also keys before
// the query's document start, doc), and dS^T = P^T (dP^T - delta), in place in s and dp. Rows are
// this warp's keys, columns the queries.
template <class T>
MOE_FLASH_FN void probabilities(const Params& p, float (&s)[T::kNTiles][T::kBlockM / 8][4],
                                float (&dp)[T::kNTiles][T::kBlockM / 8][4], const float* lse, const float* delta,
                                int first_key, int q0, int lane) {
  // The step's document starts follow its lse and delta in shared memory (BackwardSmem).
  const int32_t* doc = reinterpret_cast<const int32_t*>(lse + 4 * T::kBlockM);
  const int last_key = first_key + T::kNTiles * 16 - 1;
  const int last_row = min_int(T::kBlockM, p.seq_len - q0) - 1;  // document starts grow up to it
  const bool need_mask = last_key >= p.kv_len || (p.causal && last_key > q0) || first_key < doc[last_row];
  MOE_FLASH_UNROLL
  for (int nt = 0; nt < T::kNTiles; ++nt) {
    MOE_FLASH_UNROLL
    for (int qt = 0; qt < T::kBlockM / 8; ++qt) {
      MOE_FLASH_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int r = qt * 8 + 2 * (lane & 3) + (e & 1);
        const int j = first_key + nt * 16 + (lane >> 2) + (e >> 1) * 8;
        float pv = fast_exp2(fmaf(s[nt][qt][e], p.scale_log2, -lse[r] * k_log2e));
        if (need_mask && (j >= p.kv_len || (p.causal && j > q0 + r) || j < doc[r])) pv = 0.0f;
        s[nt][qt][e] = pv;
        dp[nt][qt][e] = pv * (dp[nt][qt][e] - delta[r]);
      }
    }
  }
}

// dS^T (bf16) of this warp's keys into the shared [kBlockN][kBlockM] tile, for dQ.
template <class T>
MOE_FLASH_FN void store_ds(const BackwardSmem<T>& sm, const float (&ds)[T::kNTiles][T::kBlockM / 8][4],
                           int key_row0, int lane) {
  constexpr int BM = T::kBlockM;
  MOE_FLASH_UNROLL
  for (int nt = 0; nt < T::kNTiles; ++nt) {
    const int row = key_row0 + nt * 16 + (lane >> 2);
    MOE_FLASH_UNROLL
    for (int qt = 0; qt < BM / 8; ++qt) {
      const int col = qt * 8 + 2 * (lane & 3);
      *reinterpret_cast<uint32_t*>(sm.ds + swizzle<BM>(row, col)) = pack_bf16x2(ds[nt][qt][0], ds[nt][qt][1]);
      *reinterpret_cast<uint32_t*>(sm.ds + swizzle<BM>(row + 8, col)) = pack_bf16x2(ds[nt][qt][2], ds[nt][qt][3]);
    }
  }
}

// One query step for this warp's keys: S^T = K Q^T and dP^T = V dO^T, P^T and dS^T from them,
// dV += P^T dO, dK += dS^T Q, and dS^T into shared memory for dQ.
template <class T>
MOE_FLASH_FN void key_step(const Params& p, const BackwardSmem<T>& sm, int buf, int k0, int key_row0, int q0,
                           float (&dk)[T::kNTiles][T::kHeadDim / 8][4], float (&dv)[T::kNTiles][T::kHeadDim / 8][4],
                           int lane) {
  constexpr int D = T::kHeadDim, BM = T::kBlockM;
  const bf16_bits* sq = sm.q + buf * BM * D;
  const bf16_bits* sdo = sm.dout + buf * BM * D;
  float s[T::kNTiles][BM / 8][4], dp[T::kNTiles][BM / 8][4];
  zero_fill(s);
  zero_fill(dp);
  gemm_abt<D, D, D>(s, sm.k, key_row0, sq, lane);
  gemm_abt<D, D, D>(dp, sm.v, key_row0, sdo, lane);
  probabilities<T>(p, s, dp, sm.lse + buf * BM, sm.delta + buf * BM, k0 + key_row0, q0, lane);
  gemm_pb<D>(dv, s, sdo, 0, lane);
  gemm_pb<D>(dk, dp, sq, 0, lane);
  store_ds<T>(sm, dp, key_row0, lane);
}

// This warp's rows of dS^T are zero (a causal step where all its keys come after every query).
template <class T>
MOE_FLASH_FN void clear_ds_rows(const BackwardSmem<T>& sm, int key_row0, int lane) {
  constexpr int BM = T::kBlockM;
  uint32_t* rows = reinterpret_cast<uint32_t*>(sm.ds + key_row0 * BM);
  MOE_FLASH_UNROLL
  for (int i = lane; i < T::kNTiles * 16 * BM / 2; i += 32) rows[i] = 0u;
}

// dQ rows q0.. of `head` += dS K (unscaled; the cast applies the softmax scale), this warp's share.
template <class T>
MOE_FLASH_FN void dq_step(const Params& p, const BackwardSmem<T>& sm, int head, int q0, int batch_index, int warp,
                          int lane) {
  constexpr int D = T::kHeadDim, BM = T::kBlockM, BN = T::kBlockN, C = T::kDqCols;
  const int rt = warp / T::kDqWarps, col0 = (warp % T::kDqWarps) * C;
  float dq[C / 8][4];
  zero_fill(dq);
  MOE_FLASH_UNROLL_2
  for (int kk = 0; kk < BN / 16; ++kk) {
    uint32_t a[4];
    load_a_transposed<BM>(a, sm.ds, kk * 16, rt * 16, lane);
    MOE_FLASH_UNROLL
    for (int d2 = 0; d2 < C / 16; ++d2) {
      uint32_t b[4];
      load_b_kn<D>(b, sm.k, kk * 16, col0 + d2 * 16, lane);
      mma_bf16_16816(dq[2 * d2], a, b[0], b[1]);
      mma_bf16_16816(dq[2 * d2 + 1], a, b[2], b[3]);
    }
  }
  float* dst = p.dq_accum + slice_offset(batch_index, p.seq_len, p.q_row, head, D);
  MOE_FLASH_UNROLL
  for (int half = 0; half < 2; ++half) {
    const int i = q0 + rt * 16 + (lane >> 2) + half * 8;
    if (i >= p.seq_len) continue;
    float* row = dst + static_cast<int64_t>(i) * p.q_row + col0 + 2 * (lane & 3);
    MOE_FLASH_UNROLL
    for (int c = 0; c < C / 8; ++c) {
      atomic_add_f32x2(row + c * 8, dq[c][2 * half], dq[c][2 * half + 1]);
    }
  }
}

// dK (times the softmax scale) and dV rows of this warp's keys, bf16.
template <class T>
MOE_FLASH_FN void store_dkdv(const Params& p, const float (&dk)[T::kNTiles][T::kHeadDim / 8][4],
                             const float (&dv)[T::kNTiles][T::kHeadDim / 8][4], int key0, int kv_head,
                             int batch_index, int lane) {
  constexpr int D = T::kHeadDim;
  const int64_t off = slice_offset(batch_index, p.kv_len, p.kv_row, kv_head, D);
  MOE_FLASH_UNROLL
  for (int nt = 0; nt < T::kNTiles; ++nt) {
    MOE_FLASH_UNROLL
    for (int half = 0; half < 2; ++half) {
      const int j = key0 + nt * 16 + (lane >> 2) + half * 8;
      if (j >= p.kv_len) continue;
      const int64_t at = off + static_cast<int64_t>(j) * p.kv_row + 2 * (lane & 3);
      MOE_FLASH_UNROLL
      for (int dt = 0; dt < D / 8; ++dt) {
        *reinterpret_cast<uint32_t*>(p.dk + at + dt * 8) =
            pack_bf16x2(dk[nt][dt][2 * half] * p.scale, dk[nt][dt][2 * half + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(p.dv + at + dt * 8) = pack_bf16x2(dv[nt][dt][2 * half], dv[nt][dt][2 * half + 1]);
      }
    }
  }
}

// Document masking: one past the last query block that sees any of the keys up to last_key, the
// first block from m_begin whose first row's document starts after last_key (starts only grow
// along a sequence, so every later block sees none either). A binary search every thread runs alike.
MOE_FLASH_FN int query_block_end(const Params& p, int batch_index, int block_rows, int m_begin, int last_key) {
  int lo = m_begin, hi = ceil_div_int(p.seq_len, block_rows);
  if (p.doc_starts == nullptr) return hi;
  const int32_t* starts = p.doc_starts + static_cast<int64_t>(batch_index) * p.seq_len;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (starts[mid * block_rows] > last_key) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

}  // namespace detail

// One block: keys k0 = n_block * kBlockN .. + kBlockN (of kv_len) of `kv_head` in sequence `batch_index`,
// against every query block that can see them, for each query head of the group in turn (so dK,
// dV sum over the group in registers, without atomics). Q/dO steps are double-buffered.
template <class T>
MOE_FLASH_FN void backward_block(const Params& p, int n_block, int kv_head, int batch_index, int tid, char* smem) {
  constexpr int D = T::kHeadDim, BM = T::kBlockM, BN = T::kBlockN, DT = D / 8;
  const detail::BackwardSmem<T> sm(smem);
  const int lane = tid & 31, warp = tid >> 5;
  const int k0 = n_block * BN, key_row0 = warp * T::kNTiles * 16;
  const int64_t kv_off = slice_offset(batch_index, p.kv_len, p.kv_row, kv_head, D);
  load_tile_async<BN, D, T::kThreads>(sm.k, p.k + kv_off, p.kv_row, k0, p.kv_len, tid);
  load_tile_async<BN, D, T::kThreads>(sm.v, p.v + kv_off, p.kv_row, k0, p.kv_len, tid);
  // Causal: query blocks that end before k0 see none of these keys; under document masking
  // neither do those whose documents all start after the block's last key.
  const int m_begin = p.causal ? k0 / BM : 0;
  const int num_m = detail::query_block_end(p, batch_index, BM, m_begin, min_int(k0 + BN, p.kv_len) - 1) - m_begin;
  const int num_steps = num_m * p.group;
  const int head0 = kv_head * p.group;
  detail::load_query_step<T>(p, sm, 0, head0, m_begin * BM, batch_index, tid);
  cp_async_commit();

  float dk[T::kNTiles][DT][4], dv[T::kNTiles][DT][4];
  zero_fill(dk);
  zero_fill(dv);
  for (int step = 0; step < num_steps; ++step) {
    const int buf = step & 1;
    const int head = head0 + step / num_m, q0 = (m_begin + step % num_m) * BM;
    cp_async_wait<0>();
    sync_block();  // step's tiles visible to all; the other buffer and dS^T are free again
    if (step + 1 < num_steps) {
      const int next = step + 1;
      detail::load_query_step<T>(p, sm, buf ^ 1, head0 + next / num_m, (m_begin + next % num_m) * BM, batch_index,
                                 tid);
    }
    cp_async_commit();
    // This warp's keys are after every query of the step (causal), or before all their documents.
    const bool after = p.causal && k0 + key_row0 > q0 + BM - 1;
    const bool before = k0 + key_row0 + T::kNTiles * 16 <= sm.doc()[buf * BM];
    if (!after && !before) {
      detail::key_step<T>(p, sm, buf, k0, key_row0, q0, dk, dv, lane);
    } else {
      detail::clear_ds_rows<T>(sm, key_row0, lane);
    }
    sync_block();  // dS^T complete
    detail::dq_step<T>(p, sm, head, q0, batch_index, warp, lane);
  }
  detail::store_dkdv<T>(p, dk, dv, k0 + key_row0, kv_head, batch_index, lane);
}

// The block at (x, y, z) of the (Hkv, B, key blocks) grid: kv head x, sequence y, key block z (the
// first ones see the most query blocks under the causal mask and start first).
template <class T>
MOE_FLASH_FN void backward_grid_block(const Params& p, int x, int y, int z, int tid, char* smem) {
  backward_block<T>(p, z, x, y, tid, smem);
}

}  // namespace moe::cuda::flash

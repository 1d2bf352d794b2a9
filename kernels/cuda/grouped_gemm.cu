// Grouped GEMM kernels: 128x128 output tiles of 8 warps (each 64x32) on mma.sync m16n8k16 bf16,
// fed by a 3-stage cp.async pipeline through swizzled shared memory read with ldmatrix.
#include "kernels/cuda/grouped_gemm.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention_ptx.cuh"
#include "kernels/cuda/grouped_gemm_sm90.h"
#include "src/util/check.h"

namespace moe::cuda {

namespace {

using flash::bf16_bits;

constexpr int k_bm = 128, k_bn = 128, k_bk = 32;
constexpr int k_threads = 256, k_stages = 3;
constexpr int k_tile_elems = k_bm * k_bk;  // every shared tile is 128x32 or 32x128 bf16 (8 KB)
constexpr int k_warp_m = 64, k_warp_n = 32;
constexpr int k_frag_m = k_warp_m / 16, k_frag_n = k_warp_n / 8;
static_assert(k_bm == k_bn, "the tiles of both operands share one shape");
static_assert((k_bm / k_warp_m) * (k_bn / k_warp_n) * 32 == k_threads, "8 warps cover the block tile");

// Element (r, c) of a shared tile, c a column inside its 16-byte chunk. A "wide" tile is 32 rows of
// 128 columns (16 chunks; rows of k), a narrow one 128 rows of 32 (4 chunks; rows of m or n). The
// chunk index is XOR-swizzled so that the 8 row addresses of one ldmatrix hit distinct banks.
template <bool kWide>
__device__ __forceinline__ int tile_offset(int r, int c) {
  if constexpr (kWide) {
    return r * 128 + (((c >> 3) ^ (r & 7)) << 3) + (c & 7);
  } else {
    return r * 32 + (((c >> 3) ^ ((r >> 1) & 3)) << 3) + (c & 7);
  }
}

// Copies the window rows [row0, row0 + R), columns [col0, col0 + C) of the row-major g (rows ld
// apart) into a shared tile; rows >= row_end or columns >= col_end read as zeros (col_end is a
// multiple of 8, so a 16-byte chunk is wholly inside or outside).
template <bool kWide>
__device__ __forceinline__ void load_tile(bf16_bits* tile, const bf16_bits* g, int64_t ld, int64_t row0,
                                          int64_t row_end, int64_t col0, int64_t col_end) {
  constexpr int k_chunks = kWide ? 16 : 4;
#pragma unroll
  for (int i = 0; i < k_tile_elems / 8 / k_threads; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * k_threads;
    const int r = idx / k_chunks, c = (idx % k_chunks) * 8;
    const int64_t row = row0 + r, col = col0 + c;
    const bool valid = row < row_end && col < col_end;
    flash::cp_async_16(tile + tile_offset<kWide>(r, c), valid ? g + row * ld + col : g, valid);
  }
}

// The A fragments (16x16 each) of k-step ks for this warp's k_frag_m row blocks. A narrow A tile
// holds [m][k] (ldmatrix), a wide one [k][m] (ldmatrix.trans).
template <bool kWide>
__device__ __forceinline__ void load_a(uint32_t (&a)[k_frag_m][4], const bf16_bits* tile, int warp_m, int ks) {
  const int lane = static_cast<int>(threadIdx.x) % 32, i = lane / 8, r = lane % 8;
#pragma unroll
  for (int mi = 0; mi < k_frag_m; ++mi) {
    const int mb = warp_m * k_warp_m + mi * 16, kb = ks * 16;
    if constexpr (kWide) {
      flash::ldsm_x4_trans(a[mi], tile + tile_offset<true>(kb + (i >> 1) * 8 + r, mb + (i & 1) * 8));
    } else {
      flash::ldsm_x4(a[mi], tile + tile_offset<false>(mb + (i & 1) * 8 + r, kb + (i >> 1) * 8));
    }
  }
}

// The B fragments (two registers per 8-column block) of k-step ks for this warp's columns. A wide
// B tile holds [k][n] (ldmatrix.trans), a narrow one [n][k] (ldmatrix).
template <bool kWide>
__device__ __forceinline__ void load_b(uint32_t (&b)[k_frag_n][2], const bf16_bits* tile, int warp_n, int ks) {
  const int lane = static_cast<int>(threadIdx.x) % 32, i = lane / 8, r = lane % 8;
#pragma unroll
  for (int nj = 0; nj < k_frag_n / 2; ++nj) {
    const int nb = warp_n * k_warp_n + nj * 16, kb = ks * 16;
    uint32_t q[4];
    if constexpr (kWide) {
      flash::ldsm_x4_trans(q, tile + tile_offset<true>(kb + (i & 1) * 8 + r, nb + (i >> 1) * 8));
    } else {
      flash::ldsm_x4(q, tile + tile_offset<false>(nb + (i >> 1) * 8 + r, kb + (i & 1) * 8));
    }
    b[2 * nj][0] = q[0];
    b[2 * nj][1] = q[1];
    b[2 * nj + 1][0] = q[2];
    b[2 * nj + 1][1] = q[3];
  }
}

using Accum = float[k_frag_m][k_frag_n][4];

// acc += A @ B over num_k_tiles tiles of k_bk; load(stage_a, stage_b, kt) issues the cp.async
// copies of k-tile kt. Three stages: tile kt + 2 is in flight while tile kt is multiplied.
template <bool kWideA, bool kWideB, typename Load>
__device__ __forceinline__ void mainloop(Accum& acc, bf16_bits* smem, int num_k_tiles, Load load) {
  const int warp = static_cast<int>(threadIdx.x) / 32, warp_m = warp / (k_bn / k_warp_n),
            warp_n = warp % (k_bn / k_warp_n);
#pragma unroll
  for (int s = 0; s < k_stages - 1; ++s) {
    if (s < num_k_tiles) load(smem + (2 * s) * k_tile_elems, smem + (2 * s + 1) * k_tile_elems, s);
    flash::cp_async_commit();
  }
  for (int kt = 0; kt < num_k_tiles; ++kt) {
    flash::cp_async_wait<k_stages - 2>();
    __syncthreads();  // tile kt has landed for every thread; stage (kt - 1) % 3 is free again
    const int next = kt + k_stages - 1;
    if (next < num_k_tiles) {
      const int s = next % k_stages;
      load(smem + (2 * s) * k_tile_elems, smem + (2 * s + 1) * k_tile_elems, next);
    }
    flash::cp_async_commit();
    const int s = kt % k_stages;
    const bf16_bits* tile_a = smem + (2 * s) * k_tile_elems;
    const bf16_bits* tile_b = smem + (2 * s + 1) * k_tile_elems;
#pragma unroll
    for (int ks = 0; ks < k_bk / 16; ++ks) {
      uint32_t a[k_frag_m][4], b[k_frag_n][2];
      load_a<kWideA>(a, tile_a, warp_m, ks);
      load_b<kWideB>(b, tile_b, warp_n, ks);
#pragma unroll
      for (int mi = 0; mi < k_frag_m; ++mi) {
#pragma unroll
        for (int ni = 0; ni < k_frag_n; ++ni) flash::mma_bf16_16816(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
      }
    }
  }
  flash::cp_async_wait<0>();
}

// Calls store(row, col, v0, v1) for each pair of adjacent accumulator columns of this thread, row
// and col relative to the block tile (m16n8 layout: rows g and g + 8, columns 2t and 2t + 1).
template <typename Store>
__device__ __forceinline__ void for_each_pair(const Accum& acc, Store store) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp_m = warp / (k_bn / k_warp_n), warp_n = warp % (k_bn / k_warp_n), g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < k_frag_m; ++mi) {
#pragma unroll
    for (int ni = 0; ni < k_frag_n; ++ni) {
      const int row = warp_m * k_warp_m + mi * 16 + g, col = warp_n * k_warp_n + ni * 8 + 2 * t;
      store(row, col, acc[mi][ni][0], acc[mi][ni][1]);
      store(row + 8, col, acc[mi][ni][2], acc[mi][ni][3]);
    }
  }
}

// Which expert row tile blockIdx.y is: the experts' row tiles are numbered in expert order (an
// expert with c rows has ceil(c / k_bm)); the grid covers the most there can be (rows / k_bm + E),
// so a block past the last tile returns false. Offsets are clamped to [0, rows].
__device__ __forceinline__ bool find_row_tile(const int32_t* offsets, int64_t num_experts, int64_t rows, int& expert,
                                              int64_t& row_begin, int64_t& row_end) {
  int64_t t = blockIdx.y;
  int64_t begin = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t end = min(max(static_cast<int64_t>(offsets[e + 1]), begin), rows);
    const int64_t tiles = (end - begin + k_bm - 1) / k_bm;
    if (t < tiles) {
      expert = static_cast<int>(e);
      row_begin = begin + t * k_bm;
      row_end = end;
      return true;
    }
    t -= tiles;
    begin = end;
  }
  return false;
}

// y rows of e = x rows of e @ op(w[e]); grid (n / k_bn, rows / k_bm + E).
template <bool kTransW>
__global__ void __launch_bounds__(k_threads, 2) grouped_gemm_kernel(const bf16_bits* x, const int32_t* offsets,
                                                                 const bf16_bits* w, bf16_bits* y,
                                                                 kernels::GroupedGemmShape s) {
  int expert = 0;
  int64_t row_begin = 0, row_end = 0;
  if (!find_row_tile(offsets, s.num_experts, s.rows, expert, row_begin, row_end)) return;
  __shared__ alignas(128) bf16_bits smem[k_stages * 2 * k_tile_elems];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * k_bn;
  const bf16_bits* w_e = w + static_cast<int64_t>(expert) * s.k * s.n;
  Accum acc = {};
  auto load = [&](bf16_bits* tile_a, bf16_bits* tile_b, int kt) {
    const int64_t k0 = static_cast<int64_t>(kt) * k_bk;
    load_tile<false>(tile_a, x, s.k, row_begin, row_end, k0, s.k);
    if constexpr (kTransW) {
      load_tile<false>(tile_b, w_e, s.k, n0, s.n, k0, s.k);  // w[e] is [n, k]
    } else {
      load_tile<true>(tile_b, w_e, s.n, k0, s.k, n0, s.n);  // w[e] is [k, n]
    }
  };
  mainloop<false, !kTransW>(acc, smem, static_cast<int>((s.k + k_bk - 1) / k_bk), load);
  for_each_pair(acc, [&](int r, int c, float v0, float v1) {
    const int64_t row = row_begin + r, col = n0 + c;
    if (row < row_end && col < s.n) {
      *reinterpret_cast<uint32_t*>(y + row * s.n + col) = flash::pack_bf16x2(v0, v1);
    }
  });
}

// dw[e] (+)= x_e^T @ dy_e; grid (n / k_bn, k / k_bm, E), each block loops over its expert's rows.
__global__ void __launch_bounds__(k_threads, 2) grouped_weight_grad_kernel(const bf16_bits* x, const int32_t* offsets,
                                                                        const bf16_bits* dy, float* dw,
                                                                        kernels::GroupedGemmShape s, bool accumulate) {
  const int64_t e = blockIdx.z;
  const int64_t row_begin = min(max(static_cast<int64_t>(offsets[e]), int64_t{0}), s.rows);
  const int64_t row_end = min(max(static_cast<int64_t>(offsets[e + 1]), row_begin), s.rows);
  if (row_end == row_begin && accumulate) return;  // no rows: dw[e] stays as it is (else: zeros written)
  __shared__ alignas(128) bf16_bits smem[k_stages * 2 * k_tile_elems];
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * k_bm, n0 = static_cast<int64_t>(blockIdx.x) * k_bn;
  Accum acc = {};
  auto load = [&](bf16_bits* tile_a, bf16_bits* tile_b, int kt) {
    const int64_t r0 = row_begin + static_cast<int64_t>(kt) * k_bk;
    load_tile<true>(tile_a, x, s.k, r0, row_end, m0, s.k);   // x rows are [k] wide: A = x^T
    load_tile<true>(tile_b, dy, s.n, r0, row_end, n0, s.n);  // dy rows are [n] wide
  };
  mainloop<true, true>(acc, smem, static_cast<int>((row_end - row_begin + k_bk - 1) / k_bk), load);
  float* dw_e = dw + e * s.k * s.n;
  for_each_pair(acc, [&](int r, int c, float v0, float v1) {
    const int64_t row = m0 + r, col = n0 + c;
    if (row < s.k && col < s.n) {
      auto* p = reinterpret_cast<float2*>(dw_e + row * s.n + col);
      const float2 old = accumulate ? *p : make_float2(0.f, 0.f);
      *p = make_float2(old.x + v0, old.y + v1);
    }
  });
}

void check_grouped_shape(const kernels::GroupedGemmShape& s, const void* x, const void* w_or_dy, const void* out) {
  MOE_CHECK(s.k % 8 == 0 && s.n % 8 == 0, "grouped gemm on CUDA: k (", s.k, ") and n (", s.n,
            ") must be multiples of 8");
  MOE_CHECK(aligned_to(x, 16) && aligned_to(w_or_dy, 16) && aligned_to(out, 16),
            "grouped gemm on CUDA: operands must be 16-byte aligned");
  MOE_CHECK(s.num_experts >= 1, "grouped gemm on CUDA: no experts");
}

GroupedGemmKernel g_kernel = GroupedGemmKernel::automatic;

bool use_wgmma() {
  return g_kernel == GroupedGemmKernel::wgmma || g_kernel == GroupedGemmKernel::wgmma_narrow ||
         (g_kernel == GroupedGemmKernel::automatic && sm90::grouped_gemm_available());
}

}  // namespace

void set_grouped_gemm_kernel(GroupedGemmKernel kernel) {
  MOE_CHECK((kernel != GroupedGemmKernel::wgmma && kernel != GroupedGemmKernel::wgmma_narrow) ||
                sm90::grouped_gemm_available(),
            "grouped gemm on CUDA: the wgmma kernels (wgmma, wgmma_narrow) need a compute capability 9.0 GPU and ",
            "an sm_90a build");
  g_kernel = kernel;
}

const char* grouped_gemm_kernel_name() {
  if (g_kernel == GroupedGemmKernel::wgmma_narrow) return "wgmma_narrow";
  return use_wgmma() ? "wgmma" : "mma_sync";
}

void grouped_gemm_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* w, bool trans_w,
                       __nv_bfloat16* y, const kernels::GroupedGemmShape& s, cudaStream_t stream) {
  check_grouped_shape(s, x, w, y);
  if (s.rows == 0 || s.n == 0) return;
  // More experts than the Hopper forward schedules (2297) take the portable kernel when the choice
  // is automatic; a named wgmma kernel refuses them (a comparison must run what it names).
  const bool fits_wgmma = s.num_experts <= sm90::max_forward_experts();
  MOE_CHECK(fits_wgmma || g_kernel == GroupedGemmKernel::automatic || g_kernel == GroupedGemmKernel::mma_sync,
            "grouped gemm on CUDA: the ", grouped_gemm_kernel_name(), " kernel takes at most ",
            sm90::max_forward_experts(), " experts, got ", s.num_experts, " (choose auto or mma_sync)");
  if (use_wgmma() && s.k > 0 && fits_wgmma) {
    return sm90::grouped_gemm_bf16(x, offsets, w, trans_w, y, s, g_kernel != GroupedGemmKernel::wgmma_narrow, stream);
  }
  const int64_t row_tiles = ceil_div(s.rows, k_bm) + s.num_experts;
  MOE_CHECK(row_tiles <= 65535, "grouped gemm on CUDA: ", s.rows, " rows over ", s.num_experts,
            " experts need more than 65535 row tiles");
  const dim3 grid(static_cast<unsigned>(ceil_div(s.n, k_bn)), static_cast<unsigned>(row_tiles));
  const auto* xb = reinterpret_cast<const bf16_bits*>(x);
  const auto* wb = reinterpret_cast<const bf16_bits*>(w);
  auto* yb = reinterpret_cast<bf16_bits*>(y);
  if (trans_w) {
    grouped_gemm_kernel<true><<<grid, k_threads, 0, stream>>>(xb, offsets, wb, yb, s);
  } else {
    grouped_gemm_kernel<false><<<grid, k_threads, 0, stream>>>(xb, offsets, wb, yb, s);
  }
  CUDA_CHECK_LAUNCH();
}

void grouped_gemm_weight_grad_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* dy,
                                   float* dw, const kernels::GroupedGemmShape& s, bool accumulate,
                                   cudaStream_t stream) {
  check_grouped_shape(s, x, dy, dw);
  if (s.k == 0 || s.n == 0) return;
  if (s.rows == 0) {
    if (!accumulate) CUDA_CHECK(cudaMemsetAsync(dw, 0, static_cast<size_t>(s.num_experts * s.k * s.n) * 4, stream));
    return;
  }
  if (use_wgmma()) {
    return sm90::grouped_gemm_weight_grad_bf16(x, offsets, dy, dw, s, accumulate,
                                               g_kernel != GroupedGemmKernel::wgmma_narrow, stream);
  }
  MOE_CHECK(ceil_div(s.k, k_bm) <= 65535 && s.num_experts <= 65535, "grouped gemm on CUDA: too many tiles");
  const dim3 grid(static_cast<unsigned>(ceil_div(s.n, k_bn)), static_cast<unsigned>(ceil_div(s.k, k_bm)),
                  static_cast<unsigned>(s.num_experts));
  grouped_weight_grad_kernel<<<grid, k_threads, 0, stream>>>(reinterpret_cast<const bf16_bits*>(x), offsets,
                                                             reinterpret_cast<const bf16_bits*>(dy), dw, s,
                                                             accumulate);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

// The Hopper grouped GEMM (sm_90a: bulk tensor copies + warpgroup MMA), the fast path behind
// grouped_gemm.h on compute capability 9.0; same contracts as the functions there.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda::sm90 {

// Whether this build carries the sm_90a kernels and the current device can run them.
bool grouped_gemm_available();

// The most experts the forward takes: its row-tile schedule lives in shared memory, 8 bytes an
// expert beside the 256-wide tiles' 214,064 bytes (2297 experts).
int64_t max_forward_experts();

// offsets i32[E+1] (device), x[rows,k], w[E,k,n] (or [E,n,k] when trans_w) -> y[rows,n] bf16.
// wide_tiles false: 128-wide output tiles whatever n is.
void grouped_gemm_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* w, bool trans_w,
                       __nv_bfloat16* y, const kernels::GroupedGemmShape& shape, bool wide_tiles,
                       cudaStream_t stream);

// The persistent weight gradient's output tile width (256 or 128) for a shape on a GPU of
// `multiprocessors` multiprocessors: 256 unless its useful share of the work (busy multiprocessors
// over the rounds of tiles, times the columns inside n) is clearly below 128's.
int weight_grad_tile_width(const kernels::GroupedGemmShape& shape, int64_t multiprocessors);

// The weight-gradient kernel a shape runs (`persistent`: not wgmma_narrow) on a GPU of
// `multiprocessors`: where the wide tiles would run and the experts hold at most 256 rows on
// average, 256 columns of dy resident in shared memory with x streamed past them; else 256- or
// 128-wide tiles written from the registers (persistent, sorting at most 512 experts in shared
// memory), or a block per 128-wide tile.
enum class WeightGradKernel { resident, wide, narrow, block_per_tile };
WeightGradKernel weight_grad_kernel(const kernels::GroupedGemmShape& shape, bool persistent, int64_t multiprocessors);

// offsets i32[E+1] (device), x[rows,k], dy[rows,n] -> dw[E,k,n] f32 += x_e^T @ dy_e
// (accumulate false: dw[e] = x_e^T @ dy_e, zeros for an expert with no rows). persistent: a block
// per multiprocessor walks 128 x 256 tiles (128 x 128 where n < 256 or weight_grad_tile_width says
// so; units of a resident dy slice and up to 8 such tiles where weight_grad_kernel says resident)
// and writes dw from the MMA fragments (float2 stores, or reductions); else a block per 128 x 128
// tile with ordinary stores.
void grouped_gemm_weight_grad_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* dy,
                                   float* dw, const kernels::GroupedGemmShape& shape, bool accumulate,
                                   bool persistent, cudaStream_t stream);

}  // namespace moe::cuda::sm90

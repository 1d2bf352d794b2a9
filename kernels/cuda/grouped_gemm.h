// Grouped GEMM on the GPU over rows sorted by expert: one launch for all experts, per-expert row
// offsets read from device memory (no host synchronisation), bf16 tensor cores, fp32 accumulation.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// Which kernel the grouped GEMMs use: the Hopper one (bulk tensor copies + wgmma, compute
// capability 9.0 only) or the portable one (mma.sync + cp.async). automatic = Hopper where it runs.
// wgmma_narrow is the Hopper kernel with 128-wide output tiles only (two blocks per multiprocessor
// everywhere, a block per tile: none of wgmma's persistent wide forward tiles or its persistent
// weight gradient), to compare tile widths and schedules on the same shapes.
enum class GroupedGemmKernel { automatic, mma_sync, wgmma, wgmma_narrow };
// Chooses the kernel for later calls (tests and benchmarks compare them); a wgmma kernel on a GPU
// that cannot run it is an error.
void set_grouped_gemm_kernel(GroupedGemmKernel kernel);
// The kernel the next call runs: "wgmma", "wgmma_narrow" or "mma_sync".
const char* grouped_gemm_kernel_name();

// offsets i32[E+1] (device), x[rows,k], w[E,k,n] (or [E,n,k] when trans_w) -> y[rows,n] bf16:
// y rows of e = x rows of e @ op(w[e]). k and n multiples of 8, pointers 16-byte aligned.
void grouped_gemm_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* w, bool trans_w,
                       __nv_bfloat16* y, const kernels::GroupedGemmShape& shape, cudaStream_t stream);

// offsets i32[E+1] (device), x[rows,k], dy[rows,n] -> dw[E,k,n] f32 += x_e^T @ dy_e (an expert
// with no rows leaves dw[e] unchanged); with accumulate false dw[e] = x_e^T @ dy_e (zeros for an
// expert with no rows), dw's old values never read. k and n multiples of 8, pointers 16-byte aligned.
void grouped_gemm_weight_grad_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* dy,
                                   float* dw, const kernels::GroupedGemmShape& shape, bool accumulate,
                                   cudaStream_t stream);

}  // namespace moe::cuda

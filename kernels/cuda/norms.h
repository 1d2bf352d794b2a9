// RMSNorm and LayerNorm on the GPU: bf16 activations and weights, f32 statistics and
// parameter gradients, fp32 arithmetic. Forward: a warp per row; backward: a team of threads per
// row, the parameter gradients summed per block beside dx, then the block partials in a fixed order.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// The fused residual (nullable pointers): in forward, delta and h together: h = x + delta
// (rounded to bf16, written; may be x itself) is normalised instead of x; in backward,
// dresidual[rows,dim] is added to dx in fp32 before dx's one rounding (may be dx itself; dx may
// not be x or dy).

// x[rows,dim] (+ delta -> h), w[dim] -> y[rows,dim], rstd[rows]
void rmsnorm_forward(const __nv_bfloat16* x, const __nv_bfloat16* delta, __nv_bfloat16* h, const __nv_bfloat16* w,
                     __nv_bfloat16* y, float* rstd, int64_t rows, int64_t dim, float eps, cudaStream_t stream);
// dx[rows,dim] written (+ dresidual); dw[dim] += sum over rows of dy * x * rstd
void rmsnorm_backward(const __nv_bfloat16* x, const __nv_bfloat16* w, const float* rstd, const __nv_bfloat16* dy,
                      const __nv_bfloat16* dresidual, __nv_bfloat16* dx, float* dw, int64_t rows, int64_t dim,
                      cudaStream_t stream);
// x[rows,dim] (+ delta -> h), w[dim], b[dim] -> y[rows,dim], mean[rows], rstd[rows]
void layernorm_forward(const __nv_bfloat16* x, const __nv_bfloat16* delta, __nv_bfloat16* h, const __nv_bfloat16* w,
                       const __nv_bfloat16* b, __nv_bfloat16* y, float* mean, float* rstd, int64_t rows, int64_t dim,
                       float eps, cudaStream_t stream);
// dx[rows,dim] written (+ dresidual); dw[dim] += sum dy * xhat, db[dim] += sum dy
void layernorm_backward(const __nv_bfloat16* x, const __nv_bfloat16* w, const float* mean, const float* rstd,
                        const __nv_bfloat16* dy, const __nv_bfloat16* dresidual, __nv_bfloat16* dx, float* dw,
                        float* db, int64_t rows, int64_t dim, cudaStream_t stream);

}  // namespace moe::cuda

// FFN activations on the GPU (bf16 in and out, fp32 math): relu, gelu (tanh approximation),
// and the gated geglu/swiglu whose input row holds [gate | up].
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

// relu/gelu: x[rows,width] -> y[rows,width]. geglu/swiglu: x[rows,2*width] -> y[rows,width] =
// act(gate) * up, with gate = x[:, :width], up = x[:, width:]; act = gelu (geglu) or silu (swiglu).
void activation_forward(kernels::Activation kind, const __nv_bfloat16* x, __nv_bfloat16* y, int64_t rows, int64_t width,
                        cudaStream_t stream);
// dx (shape of x) written from dy[rows,width].
void activation_backward(kernels::Activation kind, const __nv_bfloat16* x, const __nv_bfloat16* dy, __nv_bfloat16* dx,
                         int64_t rows, int64_t width, cudaStream_t stream);

// The backward of w[r] * act(x[r]) per row with the row weight folded in: g[rows,width] the
// gradient of the unweighted act(x), row_weights f32[rows] -> dx (shape of x) = the backward of
// w * act applied to g, a_weighted[rows,width] = w * act(x), drow_weights f32[rows] = <g, act(x)>
// (fp32 sums). A warp per row. row_weights nullptr: all 1; drow_weights nullptr: not computed
// (then dx is activation_backward's and a_weighted the forward's output, made again).
void activation_backward_weighted(kernels::Activation kind, const __nv_bfloat16* x, const __nv_bfloat16* g,
                                  const float* row_weights, __nv_bfloat16* dx, __nv_bfloat16* a_weighted,
                                  float* drow_weights, int64_t rows, int64_t width, cudaStream_t stream);

}  // namespace moe::cuda

// Dense GEMM on the GPU through cuBLAS: bf16 inputs, fp32 accumulation, bf16 or f32 output
// (f32 for parameter gradients accumulated with beta = 1).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/params.h"

namespace moe::cuda {

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;  // c[m,n] = op(a)[m,k] @ op(b)[k,n]
  bool trans_a = false, trans_b = false;
};

// Row-major: a is [m,k] (or [k,m] when trans_a), b is [k,n] (or [n,k] when trans_b), c is [m,n]
// of type c_type. c = alpha * op(a) @ op(b) + beta * c; c is not read when beta == 0.
void gemm_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, void* c, kernels::FloatType c_type,
               const GemmShape& shape, float alpha, float beta, cudaStream_t stream);

}  // namespace moe::cuda

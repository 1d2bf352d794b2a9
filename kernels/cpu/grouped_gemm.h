// CPU reference of the grouped GEMM over rows sorted by expert (kernels/cuda/grouped_gemm.h is
// its GPU twin): one dense GEMM per expert over its row block, offsets read on the host.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// offsets i32[E+1] (host), x[rows,k], w[E,k,n] (or [E,n,k] when trans_w) -> y[rows,n]:
// y rows of e = x rows of e @ op(w[e]). Throws when the offsets do not split [0, rows).
template <typename T>
void grouped_gemm(const T* x, const int32_t* offsets, const T* w, bool trans_w, T* y,
                  const kernels::GroupedGemmShape& shape);

// offsets i32[E+1] (host), x[rows,k], dy[rows,n] -> dw[E,k,n] += x_e^T @ dy_e; an expert with no
// rows leaves its dw[e] unchanged.
template <typename T>
void grouped_gemm_weight_grad(const T* x, const int32_t* offsets, const T* dy, T* dw,
                              const kernels::GroupedGemmShape& shape);

}  // namespace moe::cpu

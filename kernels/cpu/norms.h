// CPU reference RMSNorm and LayerNorm over the last dimension, forward and backward.
// Raw pointers only; row statistics are accumulated in double and saved for backward.
#pragma once

#include <cstdint>

namespace moe::cpu {

// Fused residual add: with `delta` (nullable) the normalised input is h = x + delta (in T, as an
// unfused add would round it), written to h[T,d] (may be x itself); without it h is unused and
// the input is x.

// x[T,d] (+ delta[T,d] -> h[T,d]), w[d] -> y[T,d] = h * rstd * w, rstd[T] = 1 / sqrt(mean(h^2) + eps)
template <typename T>
void rmsnorm_forward(const T* x, const T* delta, T* h, const T* w, T* y, T* rstd, int64_t rows, int64_t dim,
                     double eps);

// Fused residual gradient: dresidual[T,d] (nullable, may be dx itself) is added to dx after the
// norm's gradient is rounded to T (the unfused accumulate's arithmetic).
// x[T,d], w[d], rstd[T], dy[T,d] -> dx[T,d] (written, + dresidual), dw[d] (accumulated)
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* dy, const T* dresidual, T* dx, T* dw,
                      int64_t rows, int64_t dim);

// x[T,d] (+ delta -> h), w[d], b[d] -> y[T,d] = (h - mean) * rstd * w + b, mean[T], rstd[T] = 1 / sqrt(var + eps)
template <typename T>
void layernorm_forward(const T* x, const T* delta, T* h, const T* w, const T* b, T* y, T* mean, T* rstd,
                       int64_t rows, int64_t dim, double eps);

// x[T,d], w[d], mean[T], rstd[T], dy[T,d] -> dx[T,d] (written, + dresidual), dw[d], db[d] (accumulated)
template <typename T>
void layernorm_backward(const T* x, const T* w, const T* mean, const T* rstd, const T* dy, const T* dresidual, T* dx,
                        T* dw, T* db, int64_t rows, int64_t dim);

}  // namespace moe::cpu

// CPU reference RMSNorm and LayerNorm over the last dimension, forward and backward.
// Raw pointers only; row statistics are accumulated in double and saved for backward.
#pragma once

#include <cstdint>

namespace moe::cpu {

// x[T,d], w[d] -> y[T,d] = x * rstd * w, rstd[T] = 1 / sqrt(mean(x^2) + eps)
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int64_t rows, int64_t dim, double eps);

// x[T,d], w[d], rstd[T], dy[T,d] -> dx[T,d] (written), dw[d] (accumulated)
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* dy, T* dx, T* dw, int64_t rows, int64_t dim);

// x[T,d], w[d], b[d] -> y[T,d] = (x - mean) * rstd * w + b, mean[T], rstd[T] = 1 / sqrt(var + eps)
template <typename T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t dim,
                       double eps);

// x[T,d], w[d], mean[T], rstd[T], dy[T,d] -> dx[T,d] (written), dw[d], db[d] (accumulated)
template <typename T>
void layernorm_backward(const T* x, const T* w, const T* mean, const T* rstd, const T* dy, T* dx, T* dw, T* db,
                        int64_t rows, int64_t dim);

}  // namespace moe::cpu

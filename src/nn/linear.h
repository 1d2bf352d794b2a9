// Bias-free linear maps y = x @ W with W[in,out], the building block of every projection.
#pragma once

#include "src/tensor/tensor.h"

namespace moe {

// x[T,in], w[in,out] -> y[T,out]
Tensor linear_forward(const Tensor& x, const Tensor& w);
// dy[T,out] -> dw[in,out] += x^T dy; dx[T,in] = dy w^T (+= when accumulate_dx)
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dw, Tensor& dx,
                     bool accumulate_dx = false);

// A fresh tensor of the same shape, dtype and device.
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);

}  // namespace moe

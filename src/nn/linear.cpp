// Linear maps over the ops layer (one GEMM forward, two backward).
#include "src/nn/linear.h"

#include "src/ops/ops.h"

namespace moe {

Tensor linear_forward(const Tensor& x, const Tensor& w) {
  Tensor y = Tensor::empty({x.size(0), w.size(1)}, x.dtype(), x.device());
  ops::matmul(x, false, w, false, y);
  return y;
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dw, Tensor& dx, bool accumulate_dx) {
  ops::matmul(x, true, dy, false, dw, 1.0f, 1.0f);
  ops::matmul(dy, false, w, true, dx, 1.0f, accumulate_dx ? 1.0f : 0.0f);
}

Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }

Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }

}  // namespace moe

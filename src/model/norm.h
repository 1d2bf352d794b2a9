// RMSNorm or LayerNorm over the model width, with its saved statistics for backward.
#pragma once

#include <string>

#include "src/nn/param_store.h"

namespace moe {

enum class NormKind { rmsnorm, layernorm };
NormKind norm_kind_from_name(const std::string& name);

class Norm {
 public:
  struct Saved {
    Tensor x, mean, rstd;
  };

  Norm(ParamStore& store, const std::string& prefix, int64_t width, NormKind kind, float eps);
  // x[T,d] -> y[T,d]
  Tensor forward(const Tensor& x, Saved& saved) const;
  // The residual add fused in: x[T,d], delta[T,d] -> h[T,d] = x + delta (written; the residual
  // stream), returns y[T,d] = norm(h)
  Tensor forward_add(const Tensor& x, const Tensor& delta, Tensor& h, Saved& saved) const;
  // dy[T,d] -> dx[T,d] (+ dresidual[T,d] when defined: the residual path's gradient, fused);
  // accumulates the weight (and bias) gradients
  Tensor backward(const Saved& saved, const Tensor& dy, const Tensor& dresidual = Tensor()) const;

 private:
  Tensor forward_impl(const Tensor& x, const Tensor& delta, Tensor& h, Saved& saved) const;

  ParamStore* store_;
  NormKind kind_;
  float eps_;
  ParamId weight_ = -1, bias_ = -1;
};

}  // namespace moe

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
  // dy[T,d] -> dx[T,d]; accumulates the weight (and bias) gradients
  Tensor backward(const Saved& saved, const Tensor& dy) const;

 private:
  ParamStore* store_;
  NormKind kind_;
  float eps_;
  ParamId weight_ = -1, bias_ = -1;
};

}  // namespace moe

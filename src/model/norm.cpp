// RMSNorm / LayerNorm module: parameters "<prefix>.weight" (and ".bias" for LayerNorm).
#include "src/model/norm.h"

#include "src/nn/linear.h"
#include "src/ops/ops.h"

namespace moe {

NormKind norm_kind_from_name(const std::string& name) {
  if (name == "rmsnorm") return NormKind::rmsnorm;
  if (name == "layernorm") return NormKind::layernorm;
  MOE_FAIL("unknown norm '", name, "' (expected rmsnorm or layernorm)");
}

Norm::Norm(ParamStore& store, const std::string& prefix, int64_t width, NormKind kind, float eps)
    : store_(&store), kind_(kind), eps_(eps) {
  weight_ = store.add(prefix + ".weight", {width}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::ones);
  if (kind == NormKind::layernorm) {
    bias_ = store.add(prefix + ".bias", {width}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::zeros);
  }
}

Tensor Norm::forward(const Tensor& x, Saved& saved) const {
  Tensor y = empty_like(x);
  DType stat = ops::accum_dtype(x.dtype());
  saved.x = x;
  saved.rstd = Tensor::empty({x.size(0)}, stat, x.device());
  if (kind_ == NormKind::rmsnorm) {
    ops::rmsnorm_forward(x, store_->param(weight_), y, saved.rstd, eps_);
  } else {
    saved.mean = Tensor::empty({x.size(0)}, stat, x.device());
    ops::layernorm_forward(x, store_->param(weight_), store_->param(bias_), y, saved.mean, saved.rstd, eps_);
  }
  return y;
}

Tensor Norm::backward(const Saved& saved, const Tensor& dy) const {
  Tensor dx = empty_like(saved.x);
  Tensor dw = store_->grad(weight_);
  if (kind_ == NormKind::rmsnorm) {
    ops::rmsnorm_backward(saved.x, store_->param(weight_), saved.rstd, dy, dx, dw);
  } else {
    Tensor db = store_->grad(bias_);
    ops::layernorm_backward(saved.x, store_->param(weight_), saved.mean, saved.rstd, dy, dx, dw, db);
  }
  return dx;
}

}  // namespace moe

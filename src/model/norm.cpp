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
  Tensor none;
  return forward_impl(x, Tensor(), none, saved);
}

Tensor Norm::forward_add(const Tensor& x, const Tensor& delta, Tensor& h, Saved& saved) const {
  h = empty_like(x);
  return forward_impl(x, delta, h, saved);
}

// delta undefined: a plain norm of x; else the norm of h = x + delta (written to h).
Tensor Norm::forward_impl(const Tensor& x, const Tensor& delta, Tensor& h, Saved& saved) const {
  const bool fused = delta.defined();
  Tensor y = empty_like(x);
  DType stat = ops::accum_dtype(x.dtype());
  saved.x = fused ? h : x;
  saved.rstd = Tensor::empty({x.size(0)}, stat, x.device());
  const Tensor& w = store_->param(weight_);
  if (kind_ == NormKind::rmsnorm) {
    if (fused) {
      ops::add_rmsnorm_forward(x, delta, w, h, y, saved.rstd, eps_);
    } else {
      ops::rmsnorm_forward(x, w, y, saved.rstd, eps_);
    }
  } else {
    saved.mean = Tensor::empty({x.size(0)}, stat, x.device());
    const Tensor& b = store_->param(bias_);
    if (fused) {
      ops::add_layernorm_forward(x, delta, w, b, h, y, saved.mean, saved.rstd, eps_);
    } else {
      ops::layernorm_forward(x, w, b, y, saved.mean, saved.rstd, eps_);
    }
  }
  return y;
}

Tensor Norm::backward(const Saved& saved, const Tensor& dy, const Tensor& dresidual) const {
  Tensor dx = empty_like(saved.x);
  Tensor dw = store_->grad(weight_);
  if (kind_ == NormKind::rmsnorm) {
    ops::rmsnorm_backward(saved.x, store_->param(weight_), saved.rstd, dy, dx, dw, dresidual);
  } else {
    Tensor db = store_->grad(bias_);
    ops::layernorm_backward(saved.x, store_->param(weight_), saved.mean, saved.rstd, dy, dx, dw, db, dresidual);
  }
  return dx;
}

}  // namespace moe

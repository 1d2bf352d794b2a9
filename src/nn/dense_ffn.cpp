// Dense FFN module ("<prefix>.w_up", "<prefix>.w_down") and the FFN math the experts reuse.
#include "src/nn/dense_ffn.h"

#include "src/nn/linear.h"

namespace moe {

Tensor ffn_forward(const Tensor& x, const Tensor& w_up, const Tensor& w_down, ops::Activation act, FfnSaved& saved) {
  saved.x = x;
  saved.h = linear_forward(x, w_up);
  saved.a = Tensor::empty({x.size(0), w_down.size(0)}, x.dtype(), x.device());
  ops::activation_forward(act, saved.h, saved.a);
  return linear_forward(saved.a, w_down);
}

void ffn_backward(const FfnSaved& saved, const Tensor& w_up, const Tensor& w_down, ops::Activation act,
                  const Tensor& dy, Tensor& dw_up, Tensor& dw_down, Tensor& dx, bool accumulate_dx) {
  Tensor da = empty_like(saved.a);
  linear_backward(saved.a, w_down, dy, dw_down, da);
  Tensor dh = empty_like(saved.h);
  ops::activation_backward(act, saved.h, da, dh);
  linear_backward(saved.x, w_up, dh, dw_up, dx, accumulate_dx);
}

DenseFfn::DenseFfn(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t d_ff, ops::Activation act,
                   double init_std, double out_init_std, TpGroup tp)
    : store_(&store), act_(act), tp_(tp) {
  MOE_CHECK(d_ff > 0 && d_ff % tp.size() == 0, "dense FFN '", prefix,
            "': tensor parallelism splits the hidden width, but d_ff ", d_ff, " does not divide by parallel.tp = ",
            tp.size());
  const int64_t blocks = ops::is_gated(act) ? 2 : 1;
  w_up_ = add_column_parallel(store, prefix + ".w_up", {d_model, ffn_up_width(act, d_ff)}, blocks, 1, ParamKind::weight,
                              init_std, tp);
  w_down_ = add_row_parallel(store, prefix + ".w_down", {d_ff, d_model}, 1, ParamKind::weight, out_init_std, tp);
}

Tensor DenseFfn::forward(const Tensor& x, FfnSaved& saved) const {
  Tensor y = ffn_forward(x, store_->param(w_up_), store_->param(w_down_), act_, saved);
  tp_.all_reduce(y);
  return y;
}

Tensor DenseFfn::backward(const FfnSaved& saved, const Tensor& dy) const {
  Tensor dx = empty_like(saved.x);
  Tensor dw_up = store_->grad(w_up_), dw_down = store_->grad(w_down_);
  ffn_backward(saved, store_->param(w_up_), store_->param(w_down_), act_, dy, dw_up, dw_down, dx);
  tp_.all_reduce(dx);
  return dx;
}

}  // namespace moe

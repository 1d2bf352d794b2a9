// Dense FFN module ("<prefix>.w_up", "<prefix>.w_down", biases ".b_up", ".b_down") and the FFN math
// the experts reuse.
#include "src/nn/dense_ffn.h"

#include "src/nn/linear.h"

namespace moe {

Tensor ffn_forward(const Tensor& x, const Tensor& w_up, const Tensor& w_down, ops::Activation act, FfnSaved& saved,
                   const Tensor& b_up) {
  saved.x = x;
  saved.h = linear_forward(x, w_up);
  if (b_up.defined()) ops::add_bias(saved.h, b_up);
  Tensor a = Tensor::empty({x.size(0), w_down.size(0)}, x.dtype(), x.device());
  ops::activation_forward(act, saved.h, a);
  return linear_forward(a, w_down);
}

// The post-activation a is not kept: the activation's backward makes it again (one pass with dh),
// before w_down's gradient reads it.
void ffn_backward(const FfnSaved& saved, const Tensor& w_up, const Tensor& w_down, ops::Activation act,
                  const Tensor& dy, Tensor& dw_up, Tensor& dw_down, Tensor& dx, bool accumulate_dx, Tensor db_up) {
  Tensor da = Tensor::empty({dy.size(0), w_down.size(0)}, dy.dtype(), dy.device());
  ops::matmul(dy, false, w_down, true, da);  // da = dy @ w_down^T
  Tensor dh = empty_like(saved.h), a = empty_like(da);
  ops::activation_backward_and_output(act, saved.h, da, dh, a);
  da = Tensor();
  ops::matmul(a, true, dy, false, dw_down, 1.0f, 1.0f);  // dw_down += a^T @ dy
  a = Tensor();
  if (db_up.defined()) ops::bias_backward(dh, db_up);
  linear_backward(saved.x, w_up, dh, dw_up, dx, accumulate_dx);
}

DenseFfn::DenseFfn(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t d_ff, ops::Activation act,
                   double init_std, double out_init_std, TpGroup tp, bool bias)
    : store_(&store), act_(act), tp_(tp) {
  MOE_CHECK(d_ff > 0 && d_ff % tp.size() == 0, "dense FFN '", prefix,
            "': tensor parallelism splits the hidden width, but d_ff ", d_ff, " does not divide by parallel.tp = ",
            tp.size());
  const int64_t blocks = ops::is_gated(act) ? 2 : 1;
  w_up_ = add_column_parallel(store, prefix + ".w_up", {d_model, ffn_up_width(act, d_ff)}, blocks, 1, ParamKind::weight,
                              init_std, tp);
  w_down_ = add_row_parallel(store, prefix + ".w_down", {d_ff, d_model}, 1, ParamKind::weight, out_init_std, tp);
  if (bias) {
    b_up_ = add_column_parallel_bias(store, prefix + ".b_up", ffn_up_width(act, d_ff), blocks, 1, tp);
    b_down_ = store.add(prefix + ".b_down", {d_model}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::zeros);
  }
}

Tensor DenseFfn::forward(const Tensor& x, FfnSaved& saved) const {
  Tensor partial = ffn_forward(tp_.gather_tokens(x), store_->param(w_up_), store_->param(w_down_), act_, saved,
                               b_up_ >= 0 ? store_->param(b_up_) : Tensor());
  saved.x = x;  // sequence parallelism: this rank's tokens only, gathered again in backward
  Tensor y = tp_.reduce_tokens(partial);
  if (b_down_ >= 0) ops::add_bias(y, store_->param(b_down_));
  return y;
}

Tensor DenseFfn::backward(const FfnSaved& saved, const Tensor& dy) const {
  Tensor dw_up = store_->grad(w_up_), dw_down = store_->grad(w_down_);
  if (b_down_ >= 0) {
    Tensor db_down = store_->grad(b_down_);
    ops::bias_backward(dy, db_down);
  }
  FfnSaved whole = saved;
  whole.x = tp_.gather_tokens(saved.x);
  Tensor dx = empty_like(whole.x);
  ffn_backward(whole, store_->param(w_up_), store_->param(w_down_), act_, tp_.gather_tokens(dy), dw_up, dw_down, dx,
               false, b_up_ >= 0 ? store_->grad(b_up_) : Tensor());
  return tp_.reduce_tokens(dx);
}

}  // namespace moe

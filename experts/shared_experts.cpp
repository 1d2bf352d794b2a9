// Shared experts: parameters "<prefix>.w_up" [d, K_s*f (x2 for GLU)], "<prefix>.w_down"
// [K_s*f, d], and with the gate "<prefix>.gate" [d, 1].
#include "experts/shared_experts.h"

#include "src/nn/linear.h"

namespace moe {

SharedExperts::SharedExperts(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t num_experts,
                             int64_t d_expert, ops::Activation act, bool gated, double init_std, double out_init_std,
                             TpGroup tp)
    : store_(&store), act_(act), tp_(tp) {
  // GLU weights keep [gate_1..gate_K | up_1..up_K]: the concatenated FFN is the sum of the K.
  const int64_t width = num_experts * d_expert;
  const int64_t blocks = ops::is_gated(act) ? 2 : 1;
  w_up_ = add_column_parallel(store, prefix + ".w_up", {d_model, ffn_up_width(act, width)}, blocks, 1,
                              ParamKind::weight, init_std, tp);
  w_down_ = add_row_parallel(store, prefix + ".w_down", {width, d_model}, 1, ParamKind::weight, out_init_std, tp);
  if (gated) {
    gate_ = store.add(prefix + ".gate", {d_model, 1}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                      init_std);
  }
}

Tensor SharedExperts::forward(const Tensor& x, SharedExpertsSaved& saved) const {
  Tensor partial = ffn_forward(tp_.gather_tokens(x), store_->param(w_up_), store_->param(w_down_), act_, saved.ffn);
  saved.ffn.x = x;  // sequence parallelism: this rank's tokens only, gathered again in backward
  saved.ffn_out = tp_.reduce_tokens(partial);  // the gate multiplies the whole FFN output
  if (gate_ < 0) return saved.ffn_out;
  saved.gate_logit = linear_forward(x, store_->param(gate_));
  Tensor y = empty_like(saved.ffn_out);
  ops::row_gate_forward(saved.ffn_out, saved.gate_logit, y);
  return y;
}

void SharedExperts::backward(const SharedExpertsSaved& saved, const Tensor& dy, Tensor& dx) const {
  Tensor dffn_out = dy;
  if (gate_ >= 0) {
    dffn_out = empty_like(saved.ffn_out);
    Tensor dgate = empty_like(saved.gate_logit);
    ops::row_gate_backward(saved.ffn_out, saved.gate_logit, dy, dffn_out, dgate);
    Tensor dw_gate = store_->grad(gate_);
    linear_backward(saved.ffn.x, store_->param(gate_), dgate, dw_gate, dx, true);
  }
  Tensor dw_up = store_->grad(w_up_), dw_down = store_->grad(w_down_);
  if (!tp_.active()) {
    ffn_backward(saved.ffn, store_->param(w_up_), store_->param(w_down_), act_, dffn_out, dw_up, dw_down, dx, true);
    return;
  }
  // This rank's hidden units give part of the FFN's input gradient: summed over the group
  // before it joins dx (the gate's part above is already whole on every rank). Sequence
  // parallelism: the FFN runs on the gathered tokens and its input gradient is reduce-scattered.
  FfnSaved whole = saved.ffn;
  whole.x = tp_.gather_tokens(saved.ffn.x);
  Tensor dx_ffn = empty_like(whole.x);
  ffn_backward(whole, store_->param(w_up_), store_->param(w_down_), act_, tp_.gather_tokens(dffn_out), dw_up, dw_down,
               dx_ffn);
  ops::accumulate(dx, tp_.reduce_tokens(dx_ffn));
}

}  // namespace moe

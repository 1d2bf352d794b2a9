// Tensor-parallel dense FFN: the shared FFN math on this rank's hidden units, then the all-reduce
// of the row-parallel output (forward) and of the replicated input's gradient (backward).
#include "src/model/tp_dense_ffn.h"

#include "src/model/linear.h"

namespace moe {

TpDenseFfn::TpDenseFfn(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t d_ff,
                       ops::Activation act, double init_std, double out_init_std, Communicator& tp)
    : store_(&store), tp_(&tp), act_(act) {
  const int64_t n = tp.size(), r = tp.rank();
  MOE_CHECK(d_ff > 0 && d_ff % n == 0, "dense FFN '", prefix, "': tensor parallelism splits the hidden width, but d_ff ",
            d_ff, " does not divide by tp = ", n);
  local_d_ff_ = d_ff / n;
  const int64_t blocks = ops::is_gated(act) ? 2 : 1;
  w_up_ = store.add_col_shard(prefix + ".w_up", {d_model, ffn_up_width(act, d_ff)}, r * local_d_ff_, local_d_ff_,
                              blocks, ParamGroup::dense, ParamKind::weight, ParamInit::normal, init_std);
  w_down_ = store.add_row_shard(prefix + ".w_down", {d_ff, d_model}, r * local_d_ff_, local_d_ff_, ParamGroup::dense,
                                ParamKind::weight, ParamInit::normal, out_init_std);
}

Tensor TpDenseFfn::forward(const Tensor& x, FfnSaved& saved) const {
  Tensor y = ffn_forward(x, store_->param(w_up_), store_->param(w_down_), act_, saved);
  tp_->all_reduce_sum(y);
  return y;
}

Tensor TpDenseFfn::backward(const FfnSaved& saved, const Tensor& dy) const {
  Tensor dx = empty_like(saved.x);
  Tensor dw_up = store_->grad(w_up_), dw_down = store_->grad(w_down_);
  ffn_backward(saved, store_->param(w_up_), store_->param(w_down_), act_, dy, dw_up, dw_down, dx);
  tp_->all_reduce_sum(dx);
  return dx;
}

}  // namespace moe

// Expert group: a loop of per-expert GEMM chains over contiguous row blocks of the sorted
// tokens (the grouped GEMM of later issues replaces the loop, not the contract).
#include "experts/expert_group.h"

#include "src/nn/linear.h"

namespace moe {

ExpertGroup::ExpertGroup(ParamStore& store, const std::string& prefix, int64_t num_experts, int64_t first_expert,
                         int64_t num_local, int64_t d_model, int64_t d_expert, ops::Activation act, double init_std,
                         double out_init_std)
    : store_(&store), num_experts_(num_local), act_(act) {
  w_up_ = store.add_row_shard(prefix + ".w_up", {num_experts, d_model, ffn_up_width(act, d_expert)}, first_expert,
                              num_local, SplitOver::ep, ParamGroup::expert, ParamKind::weight, ParamInit::normal, init_std);
  w_down_ = store.add_row_shard(prefix + ".w_down", {num_experts, d_expert, d_model}, first_expert, num_local,
                                SplitOver::ep, ParamGroup::expert, ParamKind::weight, ParamInit::normal, out_init_std);
}

Tensor ExpertGroup::expert_slice(ParamId id, int64_t e, bool grad) const {
  Tensor all = grad ? store_->grad(id) : store_->param(id);
  return all.rows(e, e + 1).view({all.size(1), all.size(2)});
}

Tensor ExpertGroup::forward(const Tensor& x_sorted, const std::vector<int64_t>& counts,
                            ExpertGroupSaved& saved) const {
  MOE_CHECK(static_cast<int64_t>(counts.size()) == num_experts_, "expert group: ", counts.size(), " counts for ",
            num_experts_, " experts");
  Tensor y_sorted = empty_like(x_sorted);
  saved.counts = counts;
  saved.per_expert.assign(static_cast<size_t>(num_experts_), FfnSaved{});
  int64_t begin = 0;
  for (int64_t e = 0; e < num_experts_; ++e) {
    int64_t end = begin + counts[e];
    if (end > begin) {
      Tensor y = ffn_forward(x_sorted.rows(begin, end), expert_slice(w_up_, e, false), expert_slice(w_down_, e, false),
                             act_, saved.per_expert[e]);
      y_sorted.rows(begin, end).copy_from(y);
    }
    begin = end;
  }
  MOE_CHECK(begin == x_sorted.size(0), "expert counts sum to ", begin, " but ", x_sorted.size(0), " rows were given");
  return y_sorted;
}

Tensor ExpertGroup::backward(const ExpertGroupSaved& saved, const Tensor& dy_sorted) const {
  Tensor dx_sorted = empty_like(dy_sorted);
  int64_t begin = 0;
  for (int64_t e = 0; e < num_experts_; ++e) {
    int64_t end = begin + saved.counts[e];
    if (end > begin) {
      Tensor dw_up = expert_slice(w_up_, e, true), dw_down = expert_slice(w_down_, e, true);
      Tensor dx = dx_sorted.rows(begin, end);
      ffn_backward(saved.per_expert[e], expert_slice(w_up_, e, false), expert_slice(w_down_, e, false), act_,
                   dy_sorted.rows(begin, end), dw_up, dw_down, dx);
    }
    begin = end;
  }
  return dx_sorted;
}

}  // namespace moe

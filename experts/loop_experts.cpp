// The loop implementation: per-expert GEMM chains (ffn_forward / ffn_backward) over contiguous
// row blocks of the sorted tokens; an expert with no rows costs nothing and gets no gradient.
#include "experts/loop_experts.h"

#include <numeric>

#include "src/nn/linear.h"

namespace moe {

LoopExperts::LoopExperts(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec)
    : store_(&store), num_local_(spec.num_local), act_(spec.activation), w_(add_expert_weights(store, prefix, spec)) {}

Tensor LoopExperts::expert_slice(ParamId id, int64_t e, bool grad) const {
  Tensor all = grad ? store_->grad(id) : store_->param(id);
  return all.rows(e, e + 1).view({all.size(1), all.size(2)});
}

Tensor LoopExperts::forward(const Tensor& x_sorted, const ExpertRows& rows, ExpertsSaved& saved) const {
  auto state = std::make_shared<State>();
  state->counts = rows.host_counts();
  const std::vector<int64_t>& counts = state->counts;
  MOE_CHECK(static_cast<int64_t>(counts.size()) == num_local_, "experts (loop): ", counts.size(), " counts for ",
            num_local_, " experts");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  MOE_CHECK(total <= x_sorted.size(0), "expert counts sum to ", total, " but only ", x_sorted.size(0),
            " rows were given");
  Tensor y_sorted = empty_like(x_sorted);
  state->per_expert.assign(static_cast<size_t>(num_local_), FfnSaved{});
  int64_t begin = 0;
  for (int64_t e = 0; e < num_local_; ++e) {
    int64_t end = begin + counts[e];
    if (end > begin) {
      Tensor y = ffn_forward(x_sorted.rows(begin, end), expert_slice(w_.w_up, e, false),
                             expert_slice(w_.w_down, e, false), act_, state->per_expert[e]);
      y_sorted.rows(begin, end).copy_from(y);
    }
    begin = end;
  }
  saved.rows = rows;
  saved.state = std::move(state);
  return y_sorted;
}

Tensor LoopExperts::backward(const ExpertsSaved& saved, const Tensor& dy_sorted) const {
  const State& state = saved.state_as<State>(name());
  Tensor dx_sorted = empty_like(dy_sorted);
  int64_t begin = 0;
  for (int64_t e = 0; e < num_local_; ++e) {
    int64_t end = begin + state.counts[e];
    if (end > begin) {
      Tensor dw_up = expert_slice(w_.w_up, e, true), dw_down = expert_slice(w_.w_down, e, true);
      Tensor dx = dx_sorted.rows(begin, end);
      ffn_backward(state.per_expert[e], expert_slice(w_.w_up, e, false), expert_slice(w_.w_down, e, false), act_,
                   dy_sorted.rows(begin, end), dw_up, dw_down, dx);
    }
    begin = end;
  }
  return dx_sorted;
}

}  // namespace moe

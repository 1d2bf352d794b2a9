// The grouped implementation: four grouped GEMM launches per step and direction in all, whatever
// the number of experts; experts with no rows cost one early-exiting tile each.
#include "experts/grouped_experts.h"

#include <numeric>

#include "src/nn/dense_ffn.h"
#include "src/nn/linear.h"

namespace moe {

GroupedExperts::GroupedExperts(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec)
    : store_(&store),
      num_local_(spec.num_local),
      d_expert_(spec.d_expert),
      act_(spec.activation),
      w_(add_expert_weights(store, prefix, spec)) {
  // One weight-gradient GEMM writes each of them whole: the step's first writes store (no memset,
  // no fp32 read-modify-write of E x d x d_expert values).
  store.mark_first_write_grad(w_.w_up);
  store.mark_first_write_grad(w_.w_down);
}

Tensor GroupedExperts::forward(const Tensor& x_sorted, const ExpertRows& rows, ExpertsSaved& saved) const {
  MOE_CHECK(rows.num_experts() == num_local_, "experts (grouped): ", rows.num_experts(), " expert row ranges for ",
            num_local_, " experts");
  if (!rows.counts.empty()) {  // host counts are free to check; device offsets are trusted (checked on the CPU)
    const int64_t total = std::accumulate(rows.counts.begin(), rows.counts.end(), int64_t{0});
    MOE_CHECK(total <= x_sorted.size(0), "expert counts sum to ", total, " but only ", x_sorted.size(0),
              " rows were given");
  }
  auto state = std::make_shared<State>();
  state->offsets = rows.device_offsets(x_sorted.device());
  const int64_t n = x_sorted.size(0);
  const Tensor w_up = store_->param(w_.w_up), w_down = store_->param(w_.w_down);
  state->h = Tensor::empty({n, ffn_up_width(act_, d_expert_)}, x_sorted.dtype(), x_sorted.device());
  Tensor y_sorted = empty_like(x_sorted);
  if (n > 0) {
    // The activation's output is not kept: backward recomputes it from h (one elementwise pass
    // instead of N x d_expert values held per layer until then).
    Tensor a = Tensor::empty({n, d_expert_}, x_sorted.dtype(), x_sorted.device());
    ops::grouped_matmul(x_sorted, state->offsets, w_up, false, state->h);
    ops::activation_forward(act_, state->h, a);
    ops::grouped_matmul(a, state->offsets, w_down, false, y_sorted);
  }
  saved.rows = rows;
  saved.state = std::move(state);
  saved.input = x_sorted;
  return y_sorted;
}

Tensor GroupedExperts::input_of(const ExpertsSaved& saved) const {
  const State& s = saved.state_as<State>(name());
  const Tensor x = saved.input.defined() || !saved.remake_input ? saved.input : saved.remake_input();
  MOE_CHECK(x.defined() && x.size(0) == s.h.size(0), "experts (grouped): backward needs forward's input rows (",
            s.h.size(0), ") in ExpertsSaved::input");
  return x;
}

Tensor GroupedExperts::up_backward(const ExpertsSaved& saved, const Tensor& dh) const {
  const State& s = saved.state_as<State>(name());
  const Tensor x = input_of(saved);
  Tensor dx_sorted = empty_like(x);
  ParamStore::GradWrite dw_up = store_->grad_for_write(w_.w_up);
  ops::grouped_matmul(dh, s.offsets, store_->param(w_.w_up), true, dx_sorted);  // dh @ w_up[e]^T
  ops::grouped_matmul_weight_grad(x, s.offsets, dh, dw_up.grad, dw_up.accumulate);
  return dx_sorted;
}

Tensor GroupedExperts::backward(const ExpertsSaved& saved, const Tensor& dy_sorted) const {
  const State& s = saved.state_as<State>(name());
  const int64_t n = s.h.size(0);
  if (n == 0) return empty_like(input_of(saved));
  ParamStore::GradWrite dw_down = store_->grad_for_write(w_.w_down);
  // da = dy @ w_down[e]^T; one pass then writes dh and the activation a over da (made again for
  // w_down's gradient).
  Tensor da = Tensor::empty({n, d_expert_}, s.h.dtype(), s.h.device());
  ops::grouped_matmul(dy_sorted, s.offsets, store_->param(w_.w_down), true, da);
  Tensor dh = empty_like(s.h);
  ops::activation_backward_and_output(act_, s.h, da, dh, da);
  ops::grouped_matmul_weight_grad(da, s.offsets, dy_sorted, dw_down.grad, dw_down.accumulate);
  da = Tensor();
  return up_backward(saved, dh);
}

Tensor GroupedExperts::backward_weighted(const ExpertsSaved& saved, Tensor dy_sorted, const Tensor& row_weights,
                                         Tensor& drow_weights) const {
  const State& s = saved.state_as<State>(name());
  const int64_t n = s.h.size(0);
  drow_weights = Tensor::empty({n}, row_weights.dtype(), row_weights.device());
  if (n == 0) return empty_like(input_of(saved));
  ParamStore::GradWrite dw_down = store_->grad_for_write(w_.w_down);
  // g = dy @ w_down[e]^T, the gradient of the unweighted activation a; then <g, a> = <dy, a w_down>.
  // w * a overwrites g (the kernel reads each element before writing it); dy and w * a are freed
  // before the input rows are made again, so neither coexists with them or with dx_sorted.
  Tensor g = Tensor::empty({n, d_expert_}, s.h.dtype(), s.h.device());
  ops::grouped_matmul(dy_sorted, s.offsets, store_->param(w_.w_down), true, g);
  Tensor dh = empty_like(s.h);
  ops::activation_backward_weighted(act_, s.h, g, row_weights, dh, g, drow_weights);
  ops::grouped_matmul_weight_grad(g, s.offsets, dy_sorted, dw_down.grad, dw_down.accumulate);  // (w a)^T dy = a^T (w dy)
  g = Tensor();
  dy_sorted = Tensor();
  return up_backward(saved, dh);
}

}  // namespace moe

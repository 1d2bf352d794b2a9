// Expert-choice router: parameter "<prefix>.weight" [d,E]. The softmax comes from the top-k
// router op (its scores output); the column-wise selection from expert_choice_forward.
#include "routing/expert_choice_router.h"

#include <cmath>

#include "routing/topk_router.h"
#include "src/nn/linear.h"
#include "src/ops/ops.h"

namespace moe {

namespace {
ops::TopKOptions softmax_only() {
  ops::TopKOptions o;
  o.k = 1;
  return o;
}
}  // namespace

std::unique_ptr<Router> make_expert_choice_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                  const RouterSpec& spec) {
  return std::make_unique<ExpertChoiceRouter>(store, prefix, spec.d_model, spec.num_experts, moe.capacity_factor,
                                              spec.init_std);
}

ExpertChoiceRouter::ExpertChoiceRouter(ParamStore& store, const std::string& prefix, int64_t d_model,
                                       int64_t num_experts, double capacity_factor, double init_std)
    : store_(&store), num_experts_(num_experts), capacity_factor_(capacity_factor) {
  MOE_CHECK(capacity_factor > 0, "expert-choice routing needs moe.capacity_factor > 0 (tokens per expert = c*T/E)");
  weight_ = store.add(prefix + ".weight", {d_model, num_experts}, ParamGroup::dense, ParamKind::weight,
                      ParamInit::normal, init_std);
}

int64_t ExpertChoiceRouter::capacity(int64_t tokens) const {
  auto c = static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(tokens) / num_experts_));
  return std::min(c, tokens);
}

Routing ExpertChoiceRouter::route(const Tensor& x, const RouteInputs&, RouterSaved& saved) const {
  const int64_t tokens = x.size(0), e = num_experts_;
  const DType accum = ops::accum_dtype(x.dtype());
  saved.x = x;
  Routing& r = saved.routing;
  r.logits = Tensor::empty({tokens, e}, accum, x.device());
  ops::matmul(x, false, store_->param(weight_), false, r.logits);
  r.scores = Tensor::empty({tokens, e}, accum, x.device());
  saved.top1_ids = Tensor::empty({tokens, 1}, DType::i32, x.device());
  saved.top1_weights = Tensor::empty({tokens, 1}, accum, x.device());
  ops::router_topk_forward(r.logits, Tensor(), softmax_only(), r.scores, saved.top1_ids, saved.top1_weights);
  r.ids = Tensor::empty({tokens, e}, DType::i32, x.device());
  r.weights = Tensor::empty({tokens, e}, accum, x.device());
  ops::expert_choice_forward(r.scores, capacity(tokens), r.ids, r.weights);
  return r;
}

void ExpertChoiceRouter::backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const {
  const Routing& r = saved.routing;
  Tensor dscores = grads.dscores.defined() ? grads.dscores.clone() : zeros_like(r.scores);
  if (grads.dweights.defined()) ops::expert_choice_backward(r.ids, grads.dweights, dscores);
  // Back through the softmax only: the scoring call's own top-1 weights get no gradient.
  Tensor no_dweights = zeros_like(saved.top1_weights);
  Tensor dlogits = empty_like(r.logits);
  ops::router_topk_backward(r.logits, r.scores, saved.top1_ids, saved.top1_weights, no_dweights, dscores,
                            grads.dscore_row, softmax_only(), dlogits);
  if (grads.dlogits.defined()) ops::accumulate(dlogits, grads.dlogits);
  Tensor dw = store_->grad(weight_);
  router_projection_backward(saved.x, store_->param(weight_), dlogits, dw, dx);
}

}  // namespace moe

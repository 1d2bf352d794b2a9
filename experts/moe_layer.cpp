// MoE layer: parameters "<prefix>.router.weight", "<prefix>.experts.w_up", "<prefix>.experts.w_down".
#include "experts/moe_layer.h"

#include "routing/switch_aux_loss.h"
#include "routing/topk_softmax_router.h"
#include "src/model/linear.h"
#include "src/ops/ops.h"

namespace moe {

MoeLayer::MoeLayer(ParamStore& store, const std::string& prefix, const MoeLayerConfig& config)
    : config_(config),
      router_(std::make_unique<TopKSoftmaxRouter>(store, prefix + ".router", config.d_model, config.num_experts,
                                                  config.top_k, config.renormalize, config.init_std)),
      dispatcher_(config.num_experts),
      experts_(store, prefix + ".experts", config.num_experts, config.d_model, config.d_expert, config.activation,
               config.init_std, config.out_init_std) {}

Tensor MoeLayer::forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved) const {
  Routing routing = router_->route(x, inputs, saved.router);
  Tensor x_sorted = dispatcher_.dispatch(x, routing.ids, saved.dispatch);
  saved.y_sorted = experts_.forward(x_sorted, saved.dispatch.counts, saved.experts);
  Tensor y = dispatcher_.combine(saved.dispatch, saved.y_sorted, routing.weights);

  AuxLossResult aux = switch_aux_loss(routing.probs, saved.dispatch.counts, config_.top_k, config_.aux_loss_coef);
  saved.aux_expert_grad = aux.expert_grad;
  saved.stats.aux_loss = aux.value;
  saved.stats.tokens_per_expert = saved.dispatch.counts;
  return y;
}

Tensor MoeLayer::backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale) const {
  const Routing& routing = saved.router.routing;
  Tensor dy_sorted, dweights;
  dispatcher_.combine_backward(saved.dispatch, saved.y_sorted, routing.weights, dy, dy_sorted, dweights);
  Tensor dx_sorted = experts_.backward(saved.experts, dy_sorted);
  Tensor dx = dispatcher_.dispatch_backward(saved.dispatch, dx_sorted);

  Tensor expert_grad = saved.aux_expert_grad.clone();
  ops::scale(expert_grad, aux_scale);
  router_->backward(saved.router, dweights, expert_grad, dx);
  return dx;
}

}  // namespace moe

// MoE layer: the router under "<prefix>.router", experts "<prefix>.experts.*", shared experts
// "<prefix>.shared.*". Balancing losses are computed on the host in f64 (E numbers per token)
// from copies of the router outputs; their gradients go back to the device for backward.
#include "experts/moe_layer.h"

#include <cmath>

#include "parallel/alltoall_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "src/model/linear.h"
#include "src/ops/ops.h"

namespace moe {

namespace {

bool balancing_needs_scores(const BalancingConfig& b) {
  return b.switch_coef > 0 || b.importance_coef > 0 || b.load_coef > 0 || b.z_coef > 0 || b.seq_coef > 0 ||
         b.device_coef > 0;
}

// Host values -> a tensor shaped and typed like `like`, on its device.
Tensor to_device_like(const std::vector<double>& values, const Tensor& like) {
  Tensor host = like.dtype() == DType::f64
                    ? Tensor::from_vector(values, like.shape(), DType::f64)
                    : Tensor::from_vector(std::vector<float>(values.begin(), values.end()), like.shape(), DType::f32);
  return like.is_cuda() ? host.to(like.device()) : host;
}

bool only_switch(const BalancingConfig& b) {
  return b.switch_coef > 0 && b.importance_coef == 0 && b.load_coef == 0 && b.z_coef == 0 && b.seq_coef == 0 &&
         b.device_coef == 0;
}

Tensor scaled(const Tensor& t, float factor) {
  if (!t.defined()) return t;
  Tensor out = t.clone();
  ops::scale(out, factor);
  return out;
}

std::unique_ptr<Dispatcher> make_dispatcher(const MoeLayerConfig& config) {
  if (config.ep_group != nullptr && config.ep_group->size() > 1) {
    return std::make_unique<AllToAllDispatcher>(config.num_experts, *config.ep_group);
  }
  return std::make_unique<LocalDispatcher>(config.num_experts);
}

}  // namespace

MoeLayer::MoeLayer(ParamStore& store, const std::string& prefix, const MoeLayerConfig& config,
                   std::unique_ptr<Router> router)
    : config_(config),
      router_(std::move(router)),
      dispatcher_(make_dispatcher(config)),
      experts_(store, prefix + ".experts", config.num_experts, dispatcher_->first_expert(),
               dispatcher_->num_local_experts(), config.d_model, config.d_expert, config.activation, config.init_std,
               config.out_init_std) {
  MOE_CHECK(router_->num_experts() == config.num_experts, "router has ", router_->num_experts(), " experts, layer ",
            config.num_experts);
  if (config.num_shared > 0) {
    shared_ = std::make_unique<SharedExperts>(store, prefix + ".shared", config.d_model, config.num_shared,
                                              config.d_shared, config.activation, config.shared_gate,
                                              config.init_std, config.out_init_std);
  }
}

Tensor MoeLayer::forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats) const {
  const Routing& routing = router_->route(x, inputs, saved.router);
  saved.ids = routing.ids;
  saved.weights = routing.weights;
  saved.stats = {};
  // Expert choice has its capacity built in; token-choice routers drop beyond C*k*T/E.
  if (config_.capacity_factor > 0 && router_->name() != "expert_choice") {
    const int64_t tokens = x.size(0), k = router_->slots_per_token();
    auto capacity = static_cast<int64_t>(
        std::ceil(config_.capacity_factor * static_cast<double>(k * tokens) / static_cast<double>(config_.num_experts)));
    saved.ids = routing.ids.clone();
    saved.weights = routing.weights.clone();
    saved.stats.dropped = ops::apply_capacity(saved.ids, saved.weights, config_.num_experts, capacity,
                                              config_.drop_order);
  }
  Tensor x_local = dispatcher_->dispatch(x, saved.ids, saved.dispatch);
  saved.y_sorted = experts_.forward(x_local, saved.dispatch.counts, saved.experts);
  Tensor y = dispatcher_->combine(saved.dispatch, saved.y_sorted, saved.weights);
  if (shared_) ops::accumulate(y, shared_->forward(x, saved.shared));
  // Load statistics are this rank's routed slots per expert (not what its experts received).
  saved.stats.tokens_per_expert = saved.dispatch.routed_counts;
  for (int64_t c : saved.dispatch.routed_counts) saved.stats.slots += c;
  saved.stats.slots += saved.stats.dropped;
  compute_balancing_terms(routing, saved.router, inputs, saved, collect_stats);
  return y;
}

void MoeLayer::compute_balancing_terms(const Routing& routing, const RouterSaved& router_saved,
                                       const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats) const {
  // The load estimator needs the gating noise, which exists only in training.
  BalancingConfig b = config_.balancing;
  if (!router_saved.clean.defined()) b.load_coef = 0;
  const bool has_scores = routing.scores.defined();
  if (!has_scores || !(balancing_needs_scores(b) || collect_stats)) return;  // hash routers: nothing to balance
  if (only_switch(b) && !collect_stats) return switch_on_device(routing, saved);
  BalanceInputs in;
  in.tokens = routing.ids.size(0);
  in.experts = config_.num_experts;
  in.slots = saved.ids.size(1);
  in.seq_len = inputs.seq_len;
  in.scores = routing.scores.to_vector<double>();
  in.counts = saved.dispatch.routed_counts;
  if (collect_stats) saved.stats.entropy = load_stats(in.counts, in.scores, in.experts).entropy;
  if (!balancing_needs_scores(b)) return;
  if (only_switch(b)) return switch_on_device(routing, saved);
  in.logits = routing.logits.to_vector<double>();
  in.weights = saved.weights.to_vector<double>();
  in.ids = saved.ids.to_vector<int32_t>();
  if (b.load_coef > 0) {
    in.clean = router_saved.clean.to_vector<double>();
    in.raw_noise = router_saved.raw_noise.to_vector<double>();
    in.normal = router_saved.normal.to_vector<double>();
  }
  BalanceResult r = compute_balancing(in, b);
  saved.stats.balance = r.terms;
  saved.stats.aux_loss = r.total;
  RouterGrads& g = saved.balance_grads;
  if (!r.dscores.empty()) g.dscores = to_device_like(r.dscores, routing.scores);
  if (!r.dlogits.empty()) g.dlogits = to_device_like(r.dlogits, routing.logits);
  if (!r.dweights.empty()) g.dweights = to_device_like(r.dweights, saved.weights);
  if (!r.dclean.empty()) g.dclean = to_device_like(r.dclean, router_saved.clean);
  if (!r.draw_noise.empty()) g.draw_noise = to_device_like(r.draw_noise, router_saved.raw_noise);
}

// The common case (Switch loss only): P_i from a column sum on the device, E numbers to the
// host, and the per-expert gradient broadcast to every token's row on the device.
void MoeLayer::switch_on_device(const Routing& routing, MoeLayerSaved& saved) const {
  const Tensor& scores = routing.scores;
  const int64_t tokens = scores.size(0), experts = scores.size(1);
  Tensor sums = Tensor::empty({experts}, scores.dtype(), scores.device());
  ops::column_sum(scores, sums);
  saved.stats.score_sums = sums.to_vector<double>();
  SwitchLoss loss = switch_loss(saved.stats.score_sums, saved.dispatch.routed_counts, tokens, saved.ids.size(1),
                                config_.balancing.switch_coef);
  saved.stats.tokens = tokens;
  saved.stats.slots_per_token = saved.ids.size(1);
  set_switch_gradient(saved, loss.grad_per_expert, loss.value);
}

void MoeLayer::set_switch_gradient(MoeLayerSaved& saved, const std::vector<double>& grad_per_expert,
                                   double value) const {
  const Tensor& scores = saved.router.routing.scores;
  const int64_t tokens = scores.size(0), experts = scores.size(1);
  saved.stats.balance["switch"] = value;
  saved.stats.aux_loss = value;
  Tensor grad_row = to_device_like(grad_per_expert, scores.rows(0, 1).view({experts})).view({1, experts});
  Tensor every_row_is_row_0 = Tensor::zeros({tokens}, DType::i32, scores.device());
  saved.balance_grads.dscores = empty_like(scores);
  ops::gather_rows(grad_row, every_row_is_row_0, saved.balance_grads.dscores);
}

Tensor MoeLayer::backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale) const {
  Tensor dy_sorted, dweights;
  dispatcher_->combine_backward(saved.dispatch, saved.y_sorted, saved.weights, dy, dy_sorted, dweights);
  Tensor dx_sorted = experts_.backward(saved.experts, dy_sorted);
  Tensor dx = dispatcher_->dispatch_backward(saved.dispatch, dx_sorted);
  if (shared_) shared_->backward(saved.shared, dy, dx);

  const RouterGrads& b = saved.balance_grads;
  RouterGrads grads;
  grads.dweights = dweights;  // zero at dropped slots: their weights did not reach the output
  if (b.dweights.defined()) ops::accumulate(grads.dweights, b.dweights, aux_scale);
  grads.dscores = scaled(b.dscores, aux_scale);
  grads.dlogits = scaled(b.dlogits, aux_scale);
  grads.dclean = scaled(b.dclean, aux_scale);
  grads.draw_noise = scaled(b.draw_noise, aux_scale);
  router_->backward(saved.router, grads, dx);
  return dx;
}

}  // namespace moe

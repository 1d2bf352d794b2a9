// MoE layer: the router under "<prefix>.router", experts "<prefix>.experts.*", shared experts
// "<prefix>.shared.*". The balancing terms (routing/balancing_terms.h) run on the scores' device.
#include "experts/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "experts/experts_registry.h"
#include "parallel/alltoall_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "routing/balancing_terms.h"
#include "src/nn/linear.h"
#include "src/ops/ops.h"
#include "src/tensor/side_stream.h"

namespace moe {

namespace {

// factor * t in a new tensor (kernels only: a device copy would wait for the device).
Tensor scaled(const Tensor& t, float factor) {
  if (!t.defined()) return t;
  Tensor out = Tensor::zeros(t.shape(), t.dtype(), t.device());
  ops::accumulate(out, t, factor);
  return out;
}

// aux_loss = the sum of the terms' values, in the map's order.
void sum_balance_terms(MoeLayerStats& stats) {
  stats.aux_loss = 0;
  for (const auto& [name, value] : stats.balance) stats.aux_loss += value;
}

}  // namespace

void read_device_stats(MoeLayerStats& stats) {
  MoeLayerStats::OnDevice& d = stats.on_device;
  if (!d.pending) return;
  if (d.dropped.defined()) stats.dropped = d.dropped.to_vector<int64_t>()[0];
  if (d.offsets.defined()) stats.tokens_per_expert = ops::counts_from_offsets(d.offsets);
  stats.slots = stats.dropped;
  for (int64_t c : stats.tokens_per_expert) stats.slots += c;
  if (d.balance.defined()) {
    const std::vector<double> values = d.balance.to_vector<double>();
    for (size_t i = 0; i < values.size(); ++i) stats.balance[d.balance_names[i]] = values[i];
    sum_balance_terms(stats);
  }
  if (d.entropy.defined()) stats.entropy = d.entropy.to_vector<double>()[0];
  d = {};
}

namespace {

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
      experts_(make_experts(config.experts_impl, store, prefix + ".experts",
                            {config.num_experts, dispatcher_->first_expert(), dispatcher_->num_local_experts(),
                             config.d_model, config.d_expert, config.activation, config.init_std,
                             config.out_init_std})) {
  MOE_CHECK(router_->num_experts() == config.num_experts, "router has ", router_->num_experts(), " experts, layer ",
            config.num_experts);
  const TpGroup tp = this->tp();
  check_balancing_tp(config.balancing, tp.active() ? tp.size() : 1, "MoE layer '" + prefix + "'");
  if (config.num_shared > 0) {
    shared_ = std::make_unique<SharedExperts>(store, prefix + ".shared", config.d_model, config.num_shared,
                                              config.d_shared, config.activation, config.shared_gate,
                                              config.init_std, config.out_init_std, tp);
  }
}

bool MoeLayer::shared_on_side_stream(const Tensor& x) const {
  return config_.shared_stream && shared_ && x.is_cuda() && !tp().active() && dispatcher_->rows_are_local();
}

Tensor MoeLayer::forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats,
                         const std::function<void()>& other, const Tensor& residual) const {
  const TpGroup tp = this->tp();
  Tensor shared_y;
  SideStream side(x.device(), shared_on_side_stream(x));
  if (side.active()) {  // the shared experts beside the routed part
    side.begin();
    shared_y = shared_->forward(x, saved.shared);
    side.end();
    phase("shared_forward");
  }
  auto meanwhile = [&] {
    if (shared_ && !side.active()) {
      shared_y = shared_->forward(x, saved.shared);
      phase("shared_forward");
    }
    if (other) {
      other();
      phase("other_forward");
    }
  };
  Tensor y;
  if (!tp.active()) {
    // The combine adds the shared experts' output and the residual: one pass over [T,d] instead of
    // three (the combine, then two additions).
    auto addends = [&] {
      side.join();
      std::vector<Tensor> add;
      if (residual.defined()) add.push_back(residual);
      if (shared_) add.push_back(shared_y);
      return add;
    };
    return routed_forward(x, inputs, saved, collect_stats, meanwhile, addends);
  }
  if (tp.sequence_sharded()) {
    RouteInputs slice = inputs;  // x is already this rank's slice of the micro-batch
    slice.first_token += tp.rank() * x.size(0);
    y = routed_forward(x, slice, saved, collect_stats, meanwhile);
  } else {
    const int64_t rows = tp.part(x.size(0), "the MoE layer's tokens per micro-batch");
    RouteInputs slice = inputs;
    slice.first_token += tp.rank() * rows;
    Tensor y_local =
        routed_forward(x.rows(tp.rank() * rows, (tp.rank() + 1) * rows), slice, saved, collect_stats, meanwhile);
    y = Tensor::empty(x.shape(), y_local.dtype(), y_local.device());
    tp.comm->all_gather(y_local, y);
  }
  side.join();
  if (shared_) ops::accumulate(y, shared_y);
  if (residual.defined()) ops::accumulate(y, residual);
  return y;
}

Tensor MoeLayer::routed_forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats,
                                const std::function<void()>& meanwhile,
                                const std::function<std::vector<Tensor>()>& addends) const {
  const Routing& routing = router_->route(x, inputs, saved.router);
  saved.ids = routing.ids;
  saved.weights = routing.weights;
  saved.stats = {};
  // Statistics cross to the host when collected (free on the CPU); a CUDA forward that collects
  // them leaves them on the device for read_device_stats.
  MoeLayerStats::OnDevice& later = saved.stats.on_device;
  later.pending = collect_stats && x.is_cuda() && !TpGroup{config_.tp_group}.active();
  const bool read_stats = (collect_stats && !later.pending) || !x.is_cuda();
  int64_t max_kept = x.size(0) * router_->slots_per_token();
  // Token-choice routers drop beyond C*k*T/E; expert choice has its capacity built in.
  if (drops_slots()) {
    const int64_t tokens = x.size(0), k = router_->slots_per_token();
    auto capacity = static_cast<int64_t>(
        std::ceil(config_.capacity_factor * static_cast<double>(k * tokens) / static_cast<double>(config_.num_experts)));
    saved.ids = routing.ids.clone();
    saved.weights = routing.weights.clone();
    max_kept = std::min(max_kept, capacity * config_.num_experts);
    Tensor dropped = Tensor::empty({1}, DType::i64, x.device());
    ops::apply_capacity(saved.ids, saved.weights, config_.num_experts, capacity, config_.drop_order, dropped);
    if (read_stats) saved.stats.dropped = dropped.to_vector<int64_t>()[0];
    if (later.pending) later.dropped = dropped;
  }
  // The rows the experts may receive: the router's bound, or the capacity's (E * capacity).
  saved.dispatch.max_rows = std::min(router_->max_routed_slots(x.size(0)), max_kept);
  const bool overlap = config_.a2a_overlap;
  bool meanwhile_ran = false;
  auto run_meanwhile = [&] {
    if (!meanwhile_ran) meanwhile();
    meanwhile_ran = true;
  };
  dispatcher_->dispatch_start(x, saved.ids, saved.dispatch);
  phase("dispatch_start");
  if (overlap) run_meanwhile();
  Tensor x_local = dispatcher_->dispatch_finish(saved.dispatch);
  phase("dispatch_finish");
  const DispatchSaved& d = saved.dispatch;
  // Load statistics are this rank's routed slots per expert (not what its experts received).
  auto read_load_stats = [&] {
    if (read_stats) {
      saved.stats.tokens_per_expert = saved.dispatch.host_routed_counts();
      for (int64_t c : saved.stats.tokens_per_expert) saved.stats.slots += c;
      saved.stats.slots += saved.stats.dropped;
    } else if (later.pending) {
      // Counts the dispatcher already has on the host (expert parallelism) are taken as they are.
      if (d.routed_counts.empty() && d.offsets.defined()) {
        later.offsets = d.offsets;
      } else {
        saved.stats.tokens_per_expert = saved.dispatch.host_routed_counts();
      }
    }
  };
  const ExpertRows rows = d.offsets.defined() ? ExpertRows::from_offsets(d.offsets) : ExpertRows::from_counts(d.counts);
  saved.y_sorted = experts_->forward(x_local, rows, saved.experts);
  if (saved.experts.input.defined() && dispatcher_->rows_are_local()) {
    // Made again in backward from x, which the router and the shared experts keep anyway (a hash
    // router without shared experts: x [T,d] is kept for this alone, instead of [T*k,d]).
    saved.experts.input = Tensor();
    saved.routed_input = x;
  }
  // The experts that apply the combine's weights in backward need no outputs kept for them.
  const bool weights_in_experts = dispatcher_->rows_are_local() && experts_->applies_row_weights();
  if (addends) {
    run_meanwhile();  // what the combine adds (the shared experts' output) is made by now
    saved.dispatch.combine_addends = addends();
  }
  dispatcher_->combine_start(saved.dispatch, saved.y_sorted, saved.weights);
  phase("combine_start");
  if (overlap) {
    // The statistics and balancing terms read the routing only: they run while the rows travel.
    read_load_stats();
    compute_balancing_terms(routing, saved.router, inputs, saved, collect_stats);
  }
  Tensor y = dispatcher_->combine_finish(saved.dispatch, saved.weights);
  saved.dispatch.combine_addends.clear();  // not kept until backward
  phase("combine_finish");
  if (!overlap) {
    run_meanwhile();
    read_load_stats();
    compute_balancing_terms(routing, saved.router, inputs, saved, collect_stats);
  }
  if (router_->expert_bias_id() >= 0) saved.stats.kept_ids = saved.ids;  // the bias loads, counted on the device
  saved.weights_in_experts = weights_in_experts;
  if (weights_in_experts) saved.y_sorted = Tensor();
  return y;
}

bool MoeLayer::drops_slots() const { return config_.capacity_factor > 0 && router_->capacity_dropping(); }

void MoeLayer::compute_balancing_terms(const Routing& routing, const RouterSaved& router_saved,
                                       const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats) const {
  if (!routing.scores.defined()) return;  // hash routers: nothing to balance
  // The entropy metric: on the device when the statistics wait there, else every score on the host
  // (logging steps only).
  if (saved.stats.on_device.pending) {
    Tensor entropy = Tensor::zeros({1}, DType::f64, routing.scores.device());
    ops::row_entropy_accumulate(routing.scores, entropy, 1.0 / static_cast<double>(std::max<int64_t>(routing.scores.size(0), 1)));
    saved.stats.on_device.entropy = entropy;
  } else if (collect_stats) {
    saved.stats.entropy =
        load_stats(saved.stats.tokens_per_expert, routing.scores.to_vector<double>(), config_.num_experts).entropy;
  }
  // A term is off on a forward whose router drew nothing it reads: noisy gating draws its noise
  // only in training. Every term runs on the scores' device (under tensor parallelism the
  // sum-statistics terms from sums pooled over the ranks there; under balance_scope =
  // global_batch the trainer then replaces the Switch term by the global batch's).
  const BalancingConfig& b = config_.balancing;
  std::vector<const BalancingTerm*> terms;
  for (const BalancingTerm* term : enabled_balancing_terms(b)) {
    if (term->reads(b, balance_input::noise) && !router_saved.clean.defined()) continue;
    terms.push_back(term);
  }
  if (!terms.empty()) terms_on_device(routing, router_saved, inputs, terms, saved, collect_stats);
}

void MoeLayer::terms_on_device(const Routing& routing, const RouterSaved& router_saved, const RouteInputs& inputs,
                               const std::vector<const BalancingTerm*>& terms, MoeLayerSaved& saved,
                               bool collect_stats) const {
  namespace bi = balance_input;
  const BalancingConfig& b = config_.balancing;
  const Tensor& scores = routing.scores;
  BalanceInputs shape;
  shape.tokens = scores.size(0);
  shape.experts = scores.size(1);
  shape.slots = saved.ids.size(1);
  shape.seq_len = inputs.seq_len;
  check_balancing_shape(shape, only_terms(b, terms));
  // Zero-filled gradients for the inputs the terms differentiate.
  uint32_t reads = 0;
  bool per_token_scores = false, per_expert = false;
  for (const BalancingTerm* term : terms) {
    reads |= term->inputs(b);
    per_token_scores |= term->reads(b, bi::scores) && !term->grad_per_expert;
    per_expert |= term->grad_per_expert;
  }
  auto zeros_like = [](const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); };
  DeviceBalanceGrads grads;
  if (per_token_scores) grads.dscores = zeros_like(scores);
  if (per_expert) grads.score_row = Tensor::zeros({shape.experts}, scores.dtype(), scores.device());
  if (reads & bi::logits) grads.dlogits = zeros_like(routing.logits);
  if (reads & bi::weights) grads.dweights = zeros_like(saved.weights);
  if (reads & bi::noise) {
    grads.dclean = zeros_like(router_saved.clean);
    grads.draw_noise = zeros_like(router_saved.raw_noise);
  }
  DeviceBalanceInputs in;
  in.scores = scores;
  in.logits = routing.logits;
  in.weights = saved.weights;
  in.kept_ids = saved.ids;
  in.routed_ids = routing.ids;
  in.clean = router_saved.clean;
  in.raw_noise = router_saved.raw_noise;
  in.normal = router_saved.normal;
  in.seq_len = inputs.seq_len;
  in.score_sums = routing.score_sums;
  in.routed_counts = routing.counts;
  if (!drops_slots()) in.kept_counts = routing.counts;  // the kept ids are the routed ones
  const TpGroup tp{config_.tp_group};
  bool sum_statistics = false;
  for (const BalancingTerm* term : terms) sum_statistics |= term->tp == TpRule::sum_statistics;
  if (sum_statistics && config_.pool_balance_sums) {
    // This rank's own sums (a TP slice's, before the pooling below), for the trainer.
    MoeLayerStats::PoolSums& pool = saved.stats.pool;
    if (!in.score_sums.defined()) in.score_sums = balancing_detail::score_sums_of(in);
    pool.score_sums = in.score_sums;
    pool.ids = b.aux_count == AuxCount::routed ? in.routed_ids : in.kept_ids;
    pool.tokens = pool.ids.size(0);
    pool.slots = pool.ids.size(1);
  }
  if (sum_statistics && tp.active()) pool_sums_over_tp(in, b, tp);
  Tensor values = Tensor::empty({static_cast<int64_t>(terms.size())}, DType::f64, scores.device());
  for (size_t i = 0; i < terms.size(); ++i) {
    Tensor value = values.rows(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);
    terms[i]->on_device(in, b, value, grads);
  }
  // Under tensor parallelism the other terms here are means over tokens or sequences
  // (check_balancing_tp rejects the rest): the micro-batch's term is the mean of the equal slices'
  // terms, and each slice's gradient carries 1/tp of its own. The per-expert row comes only from
  // the sum-statistics terms (no other per-expert term is allowed there), made from the pooled
  // sums: the micro-batch's own term and gradient on every rank, as is.
  if (tp.active()) {
    for (Tensor* g : {&grads.dscores, &grads.dlogits, &grads.dweights, &grads.dclean, &grads.draw_noise}) {
      if (g->defined()) ops::scale(*g, 1.0f / static_cast<float>(tp.size()));
    }
  }
  saved.balance_grads =
      RouterGrads{grads.dweights, grads.dscores, grads.dlogits, grads.dclean, grads.draw_noise, Tensor()};
  saved.score_grad_row = grads.score_row;
  // The values cross to the host only for the statistics (free on the CPU), at the step's end
  // when the statistics wait on the device.
  if (!collect_stats && scores.is_cuda()) return;
  if (saved.stats.on_device.pending) {
    saved.stats.on_device.balance = values;
    for (const BalancingTerm* term : terms) saved.stats.on_device.balance_names.push_back(term->name);
    return;
  }
  std::vector<double> host = values.to_vector<double>();
  if (tp.active()) {
    for (double& v : host) v /= tp.size();
    tp.comm->all_reduce_sum(host);
  }
  for (size_t i = 0; i < terms.size(); ++i) saved.stats.balance[terms[i]->name] = host[i];
  sum_balance_terms(saved.stats);
}

// Tensor parallelism: each rank routes a slice of the micro-batch's tokens, and a sum-statistics
// term (Switch) is a function of the whole micro-batch's per-expert sums. The score sums and the
// slot counts the terms read are added over the ranks on the device (E numbers each, no host
// copy), and the terms see the tokens of all the slices.
void MoeLayer::pool_sums_over_tp(DeviceBalanceInputs& in, const BalancingConfig& b, const TpGroup& tp) const {
  const int64_t experts = in.scores.size(1);
  Tensor sums = balancing_detail::score_sums_of(in).clone();
  tp.comm->all_reduce_sum(sums);
  in.score_sums = sums;
  auto pooled_counts = [&](const Tensor& counts, const Tensor& ids) {
    Tensor out;
    if (counts.defined()) {
      out = counts.clone();
    } else {
      out = Tensor::zeros({experts}, DType::i64, ids.device());
      ops::count_experts(ids, experts, out);
    }
    tp.comm->all_reduce_sum(out);
    return out;
  };
  // Only the counts the terms read (moe.aux_count): the kept slots, or the routed ones.
  if (b.aux_count == AuxCount::routed) {
    in.routed_counts = pooled_counts(in.routed_counts, in.routed_ids);
  } else {
    in.kept_counts = pooled_counts(in.kept_counts, in.kept_ids);
  }
  in.tokens = in.kept_ids.size(0) * tp.size();
}

void MoeLayer::set_switch_gradient(MoeLayerSaved& saved, const Tensor& grad_row) const {
  // The row holds every per-expert term; replacing it is right while Switch is the only one on
  // (balance_scope = global_batch allows no other balancing term).
  for (const BalancingTerm* term : enabled_balancing_terms(config_.balancing)) {
    MOE_CHECK(!term->grad_per_expert || std::string(term->name) == "switch", "set_switch_gradient: the ",
              term->name, " term shares the per-expert gradient row with the Switch term");
  }
  // (Under recompute the saved routing is gone by now: the row is checked against the config.)
  MOE_CHECK(grad_row.numel() == config_.num_experts, "set_switch_gradient: a row of ", grad_row.numel(), " for ",
            config_.num_experts, " experts");
  saved.score_grad_row = grad_row;
}

Tensor MoeLayer::backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale,
                          const std::function<void()>& other) const {
  const TpGroup tp = this->tp();
  // With the overlap or the side stream the shared experts' input gradient is made apart and added
  // by the dispatch's backward (after the routed one under tensor parallelism); without them they
  // add into the routed one.
  Tensor dx_shared;
  SideStream side(dy.device(), shared_on_side_stream(dy));
  if (side.active()) {
    side.begin();
    dx_shared = Tensor::zeros(dy.shape(), dy.dtype(), dy.device());
    shared_->backward(saved.shared, dy, dx_shared);
    side.end();
    phase("shared_backward");
  }
  auto meanwhile = [&] {
    if (shared_ && config_.a2a_overlap && !side.active()) {
      dx_shared = Tensor::zeros(dy.shape(), dy.dtype(), dy.device());
      shared_->backward(saved.shared, dy, dx_shared);
      phase("shared_backward");
    }
    if (other) {
      other();
      phase("other_backward");
    }
  };
  Tensor dx;
  if (!tp.active()) {
    // The dispatch's backward adds the shared experts' input gradient in its own pass.
    auto addend = [&] {
      side.join();
      return dx_shared;
    };
    dx = routed_backward(saved, dy, aux_scale, meanwhile, addend);
    if (!dx_shared.defined() && shared_) shared_->backward(saved.shared, dy, dx);
    return dx;
  }
  if (tp.sequence_sharded()) {
    dx = routed_backward(saved, dy, aux_scale, meanwhile);
  } else {
    const int64_t rows = dy.size(0) / tp.size();
    // Each rank's tokens reach the output through its slice only: the slices' input gradients
    // make up the whole one.
    Tensor dx_local =
        routed_backward(saved, dy.rows(tp.rank() * rows, (tp.rank() + 1) * rows), aux_scale, meanwhile);
    dx = Tensor::empty(dy.shape(), dx_local.dtype(), dx_local.device());
    tp.comm->all_gather(dx_local, dx);
  }
  side.join();
  if (dx_shared.defined()) {
    ops::accumulate(dx, dx_shared);
  } else if (shared_) {
    shared_->backward(saved.shared, dy, dx);
  }
  return dx;
}

Tensor MoeLayer::routed_backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale,
                                 const std::function<void()>& meanwhile,
                                 const std::function<Tensor()>& addend) const {
  // Without kept expert outputs the experts apply the weights: their rows get dy unweighted, and
  // the weights' gradient comes back per row.
  const bool weights_in_experts = saved.weights_in_experts;
  Tensor dweights, dy_sorted, row_weights;
  if (weights_in_experts) {
    dispatcher_->combine_backward_unweighted(saved.dispatch, saved.weights, dy, dy_sorted, row_weights);
    phase("combine_backward_start");
    meanwhile();
  } else {
    dispatcher_->combine_backward_start(saved.dispatch, saved.y_sorted, saved.weights, dy, dweights);
    phase("combine_backward_start");
    meanwhile();
    dy_sorted = dispatcher_->combine_backward_finish(saved.dispatch);
  }
  phase("combine_backward_finish");
  ExpertsSaved experts = saved.experts;
  if (saved.routed_input.defined()) {
    experts.remake_input = [&] { return dispatcher_->redispatch(saved.dispatch, saved.routed_input); };
  }
  Tensor dx_sorted;
  if (weights_in_experts) {
    Tensor drow_weights;
    dx_sorted = experts_->backward_weighted(experts, std::move(dy_sorted), row_weights, drow_weights);
    dweights = dispatcher_->slot_weight_grads(saved.dispatch, drow_weights);
  } else {
    dx_sorted = experts_->backward(experts, dy_sorted);
    dy_sorted = Tensor();
  }
  Tensor dx = dispatcher_->dispatch_backward(saved.dispatch, dx_sorted, addend ? addend() : Tensor());

  const RouterGrads& b = saved.balance_grads;
  RouterGrads grads;
  grads.dweights = dweights;  // zero at dropped slots: their weights did not reach the output
  if (b.dweights.defined()) ops::accumulate(grads.dweights, b.dweights, aux_scale);
  grads.dscores = scaled(b.dscores, aux_scale);
  grads.dlogits = scaled(b.dlogits, aux_scale);
  grads.dclean = scaled(b.dclean, aux_scale);
  grads.draw_noise = scaled(b.draw_noise, aux_scale);
  // The per-expert terms' gradient is one row of E numbers, the same for every token: the router
  // adds it to each token's score gradient itself.
  grads.dscore_row = scaled(saved.score_grad_row, aux_scale);
  router_->backward(saved.router, grads, dx);
  return dx;
}

}  // namespace moe

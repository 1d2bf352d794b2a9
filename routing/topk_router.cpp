// Token-choice router: parameters "<prefix>.weight" [d,E], "<prefix>.noise_weight" [d,E]
// (noisy gating, zero-initialised as in Shazeer et al.), "<prefix>.expert_bias" [E] (buffer).
#include "routing/topk_router.h"

#include <random>

#include "routing/balancing_terms.h"
#include "src/nn/linear.h"

namespace moe {

Tensor standard_normal(int64_t rows, int64_t cols, uint64_t seed, DType dtype, Device device) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<double> values(static_cast<size_t>(rows * cols));
  for (auto& v : values) v = dist(rng);
  Tensor host = dtype == DType::f64 ? Tensor::from_vector(values, {rows, cols}, DType::f64)
                                    : Tensor::from_vector(std::vector<float>(values.begin(), values.end()),
                                                          {rows, cols}, DType::f32);
  return device.is_cuda() ? host.to(device) : host;
}

void router_projection_backward(const Tensor& x, const Tensor& w, const Tensor& dlogits, Tensor& dw, Tensor& dx) {
  Tensor d = dlogits;
  if (dlogits.dtype() != x.dtype()) {
    d = Tensor::empty(dlogits.shape(), x.dtype(), dlogits.device());
    ops::cast(dlogits, d);
  }
  linear_backward(x, w, d, dw, dx, true);
}

namespace {

TopKRouterOptions options_from(const MoeConfig& moe, const RouterSpec& spec) {
  TopKRouterOptions o;
  o.d_model = spec.d_model;
  o.num_experts = spec.num_experts;
  o.init_std = spec.init_std;
  o.topk.k = spec.top_k;
  o.topk.num_groups = moe.num_groups;
  o.topk.top_groups = moe.top_groups;
  o.expert_bias = moe.expert_bias_rate > 0;
  for (const BalancingTerm* term : enabled_balancing_terms(balancing_config(moe)))
    o.statistics |= term->grad_per_expert;
  return o;
}

}  // namespace

std::unique_ptr<Router> make_softmax_topk_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                 const RouterSpec& spec) {
  TopKRouterOptions o = options_from(moe, spec);
  o.topk.renormalize = moe.renormalize;
  return std::make_unique<TopKRouter>(store, prefix, o);
}

std::unique_ptr<Router> make_topk_softmax_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                 const RouterSpec& spec) {
  TopKRouterOptions o = options_from(moe, spec);
  o.topk.softmax_after_topk = true;
  return std::make_unique<TopKRouter>(store, prefix, o);
}

std::unique_ptr<Router> make_sigmoid_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                            const RouterSpec& spec) {
  TopKRouterOptions o = options_from(moe, spec);
  o.topk.score = ops::ScoreFunction::sigmoid;
  o.topk.renormalize = true;
  return std::make_unique<TopKRouter>(store, prefix, o);
}

std::unique_ptr<Router> make_noisy_topk_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                               const RouterSpec& spec) {
  TopKRouterOptions o = options_from(moe, spec);
  o.noisy = true;
  o.topk.softmax_after_topk = true;
  return std::make_unique<TopKRouter>(store, prefix, o);
}

TopKRouter::TopKRouter(ParamStore& store, const std::string& prefix, const TopKRouterOptions& options)
    : store_(&store), options_(options) {
  const int64_t d = options.d_model, e = options.num_experts;
  MOE_CHECK(options.topk.k >= 1 && options.topk.k <= e, "moe.top_k = ", options.topk.k,
            " must be between 1 and moe.num_experts = ", e);
  weight_ = store.add(prefix + ".weight", {d, e}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                      options.init_std);
  if (options.noisy) {
    noise_weight_ = store.add(prefix + ".noise_weight", {d, e}, ParamGroup::dense, ParamKind::weight,
                              ParamInit::zeros);
  }
  if (options.expert_bias) {
    bias_ = store.add(prefix + ".expert_bias", {e}, ParamGroup::dense, ParamKind::buffer, ParamInit::zeros);
  }
}

std::string TopKRouter::name() const {
  if (options_.noisy) return "noisy_topk";
  if (options_.topk.score == ops::ScoreFunction::sigmoid) return "sigmoid";
  return options_.topk.softmax_after_topk ? "topk_softmax" : "softmax_topk";
}

Routing TopKRouter::route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const {
  const int64_t tokens = x.size(0), e = options_.num_experts;
  const DType accum = ops::accum_dtype(x.dtype());
  saved.x = x;
  Tensor logits = Tensor::empty({tokens, e}, accum, x.device());
  ops::matmul(x, false, store_->param(weight_), false, logits);
  if (options_.noisy && inputs.training) {
    saved.clean = logits;
    saved.raw_noise = Tensor::empty({tokens, e}, accum, x.device());
    ops::matmul(x, false, store_->param(noise_weight_), false, saved.raw_noise);
    saved.normal = standard_normal(tokens, e, inputs.noise_seed, accum, x.device());
    logits = Tensor::empty({tokens, e}, accum, x.device());
    ops::noisy_logits_forward(saved.clean, saved.raw_noise, saved.normal, logits);
  }
  Routing& r = saved.routing;
  r.logits = logits;
  r.scores = Tensor::empty({tokens, e}, accum, x.device());
  r.ids = Tensor::empty({tokens, options_.topk.k}, DType::i32, x.device());
  r.weights = Tensor::empty({tokens, options_.topk.k}, accum, x.device());
  Tensor bias;
  if (bias_ >= 0) {
    bias = Tensor::empty({e}, accum, x.device());
    ops::cast(store_->param(bias_), bias);
  }
  if (!options_.statistics) {
    ops::router_topk_forward(logits, bias, options_.topk, r.scores, r.ids, r.weights);
    return r;
  }
  r.score_sums = Tensor::empty({e}, accum, x.device());
  r.counts = Tensor::empty({e}, DType::i64, x.device());
  ops::router_topk_forward(logits, bias, options_.topk, r.scores, r.ids, r.weights, r.score_sums, r.counts);
  return r;
}

void TopKRouter::backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const {
  const Routing& r = saved.routing;
  Tensor dweights = grads.dweights.defined() ? grads.dweights : zeros_like(r.weights);
  Tensor dlogits = empty_like(r.logits);
  ops::router_topk_backward(r.logits, r.scores, r.ids, r.weights, dweights, grads.dscores, grads.dscore_row,
                            options_.topk, dlogits);
  if (grads.dlogits.defined()) ops::accumulate(dlogits, grads.dlogits);
  Tensor dclean = dlogits;
  if (saved.clean.defined()) {  // noisy gating in training: back through h = clean + n * softplus(raw)
    dclean = empty_like(dlogits);
    Tensor draw = empty_like(dlogits);
    ops::noisy_logits_backward(saved.raw_noise, saved.normal, dlogits, dclean, draw);
    if (grads.dclean.defined()) ops::accumulate(dclean, grads.dclean);
    if (grads.draw_noise.defined()) ops::accumulate(draw, grads.draw_noise);
    Tensor dnoise_w = store_->grad(noise_weight_);
    router_projection_backward(saved.x, store_->param(noise_weight_), draw, dnoise_w, dx);
  }
  Tensor dw = store_->grad(weight_);
  router_projection_backward(saved.x, store_->param(weight_), dclean, dw, dx);
}

}  // namespace moe

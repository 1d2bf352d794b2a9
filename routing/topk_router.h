// Token-choice routers with a learned projection: logits = x @ W_r, scores = softmax or
// sigmoid, each token takes k experts. Covers Switch/GShard (softmax then top-k), Mixtral
// (top-k then softmax), DeepSeek-V3 (sigmoid, bias-adjusted selection, group-limited) and
// noisy top-k gating (Shazeer et al. 2017: learned noise, in training only).
#pragma once

#include "routing/router.h"
#include "src/ops/ops.h"

namespace moe {

struct TopKRouterOptions {
  int64_t d_model = 0, num_experts = 0;
  ops::TopKOptions topk;
  bool noisy = false;        // h = clean + N(0,1) * softplus(x @ W_noise) while training
  bool expert_bias = false;  // a selection-only bias buffer (aux-loss-free balancing)
  // Also make the Switch statistics in the routing pass (Routing::score_sums, counts): on where a
  // per-expert balancing term (Switch, device-level) reads them.
  bool statistics = false;
  double init_std = 0.02;
};

class TopKRouter : public Router {
 public:
  TopKRouter(ParamStore& store, const std::string& prefix, const TopKRouterOptions& options);
  int64_t num_experts() const override { return options_.num_experts; }
  int64_t slots_per_token() const override { return options_.topk.k; }
  std::string name() const override;
  // x[T,d] -> ids i32[T,k], weights[T,k], scores[T,E], logits[T,E]
  Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const override;
  void backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const override;
  ParamId expert_bias_id() const override { return bias_; }

 private:
  ParamStore* store_;
  TopKRouterOptions options_;
  ParamId weight_ = -1, noise_weight_ = -1, bias_ = -1;
};

// Standard normal draws [T,E] from a seed (host-generated: the same on every device).
Tensor standard_normal(int64_t rows, int64_t cols, uint64_t seed, DType dtype, Device device);
// dx[T,d] += dlogits[T,E] @ w^T and dw[d,E] += x^T dlogits, with dlogits (accum dtype) cast to
// the compute dtype of x first. Shared by every router with a learned projection.
void router_projection_backward(const Tensor& x, const Tensor& w, const Tensor& dlogits, Tensor& dw, Tensor& dx);

// The factories of the four token-choice kinds (RouterFactory; routing/router_registry.cpp).
// Each passes the layer's k (spec.top_k), groups and expert bias (moe.expert_bias_rate > 0) on.
std::unique_ptr<Router> make_softmax_topk_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                 const RouterSpec& spec);  // renormalised as moe.renormalize says
std::unique_ptr<Router> make_topk_softmax_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                 const RouterSpec& spec);
std::unique_ptr<Router> make_sigmoid_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                            const RouterSpec& spec);
std::unique_ptr<Router> make_noisy_topk_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                               const RouterSpec& spec);

}  // namespace moe

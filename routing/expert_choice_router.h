// Expert-choice routing (Zhou et al. 2022): scores = softmax over experts per token; each
// expert takes its capacity = ceil(c * T / E) highest-scoring tokens, so a token may get zero
// or several experts. Slots per token are E (ids[t,e] = e or -1).
#pragma once

#include "routing/router.h"

namespace moe {

class ExpertChoiceRouter : public Router {
 public:
  ExpertChoiceRouter(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t num_experts,
                     double capacity_factor, double init_std);
  int64_t num_experts() const override { return num_experts_; }
  int64_t slots_per_token() const override { return num_experts_; }
  // c*T/E tokens per expert are c experts per token on average.
  double experts_per_token() const override { return capacity_factor_; }
  bool capacity_dropping() const override { return false; }  // its capacity is built in
  int64_t max_routed_slots(int64_t tokens) const override { return num_experts_ * capacity(tokens); }
  std::string name() const override { return "expert_choice"; }
  // Tokens per expert for a batch of T tokens: ceil(c * T / E), at most T.
  int64_t capacity(int64_t tokens) const;
  // x[T,d] -> ids i32[T,E], weights[T,E], scores[T,E], logits[T,E]
  Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const override;
  void backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const override;

 private:
  ParamStore* store_;
  int64_t num_experts_;
  double capacity_factor_;
  ParamId weight_ = -1;
};

// RouterFactory of the expert_choice kind (routing/router_registry.cpp).
std::unique_ptr<Router> make_expert_choice_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                  const RouterSpec& spec);

}  // namespace moe

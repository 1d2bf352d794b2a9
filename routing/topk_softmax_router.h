// Top-k softmax router: logits = x @ W_r, probs = softmax over all experts, the k largest
// selected, their weights optionally renormalised to sum to one (Switch, GShard, Mixtral).
#pragma once

#include "routing/router.h"

namespace moe {

class TopKSoftmaxRouter : public Router {
 public:
  TopKSoftmaxRouter(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t num_experts, int64_t top_k,
                    bool renormalize, double init_std);
  int64_t num_experts() const override { return num_experts_; }
  int64_t top_k() const override { return top_k_; }
  // x[T,d] -> ids i32[T,k], weights[T,k], probs[T,E]
  Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const override;
  void backward(const RouterSaved& saved, const Tensor& dweights, const Tensor& expert_grad,
                Tensor& dx) const override;

 private:
  ParamStore* store_;
  int64_t num_experts_, top_k_;
  bool renormalize_;
  ParamId weight_;
};

}  // namespace moe

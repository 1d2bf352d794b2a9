// The router phase of an MoE layer: x[T,d] -> per-token expert ids and weights plus the
// auxiliary terms; backward takes d(weights) and the balancing-loss gradients.
#pragma once

#include <string>
#include <vector>

#include "src/model/param_store.h"

namespace moe {

// What a router may read besides the hidden states (hash routers read token ids).
struct RouteInputs {
  const Tensor* token_ids = nullptr;  // i32[T]
  int64_t seq_len = 0;
  bool training = true;
};

struct Routing {
  Tensor ids;      // i32[T,k]
  Tensor weights;  // accum[T,k]
  Tensor probs;    // accum[T,E], the router's probabilities (for balancing losses and metrics)
};

struct RouterSaved {
  Tensor x, probs, logits;
  Routing routing;
};

class Router {
 public:
  virtual ~Router() = default;
  virtual int64_t num_experts() const = 0;
  virtual int64_t top_k() const = 0;
  virtual Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const = 0;
  // dweights[T,k], expert_grad[E] (d loss / d probs, the same for every token) -> adds the
  // router's input gradient into dx[T,d] and accumulates its parameter gradients.
  virtual void backward(const RouterSaved& saved, const Tensor& dweights, const Tensor& expert_grad,
                        Tensor& dx) const = 0;
};

}  // namespace moe

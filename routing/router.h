// The router phase of an MoE layer: x[T,d] -> per-token expert slots (ids and weights) plus
// what the balancing losses read; backward takes the gradients on the weights, scores and
// logits and returns the router's contribution to dx.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/nn/param_store.h"

namespace moe {

// What a router may read besides the hidden states (hash routers read token ids).
struct RouteInputs {
  const std::vector<int32_t>* tokens = nullptr;   // host copy of the input ids [T]
  const std::vector<int32_t>* targets = nullptr;  // host copy of the next-token ids [T] (oracle only)
  int64_t seq_len = 0;
  bool training = true;
  uint64_t noise_seed = 0;  // distinct per (step, micro-batch, layer): noisy gating draws
  // Row t of the router's input is token first_token + t of the micro-batch (tensor parallelism
  // routes a slice of the tokens); tokens/targets index and positions count from there.
  int64_t first_token = 0;
};

struct Routing {
  Tensor ids;      // i32[T,k]: slot s of token t goes to expert ids[t,s]; -1 = no expert
  Tensor weights;  // accum[T,k]: combine weights (0 where ids = -1)
  Tensor scores;   // accum[T,E]: softmax/sigmoid scores (undefined for hash routers)
  Tensor logits;   // accum[T,E]: the logits the scores come from (z-loss); undefined for hash
  // The Switch statistics, where the router makes them in its own pass (top-k routers; else
  // undefined): score_sums accum[E] = the scores summed over the T tokens, counts i64[E] = the
  // slots of `ids` that went to each expert (before any capacity dropping).
  Tensor score_sums, counts;
};

// What backward needs; each router fills the fields it uses.
struct RouterSaved {
  Tensor x;
  Routing routing;
  Tensor raw_noise, normal, clean;  // noisy gating: h = clean + normal * softplus(raw_noise)
  Tensor top1_ids, top1_weights;    // expert choice: the selection of the scoring softmax call
};

// Gradients of the loss on the router's outputs (any may be undefined = zero).
struct RouterGrads {
  Tensor dweights;   // [T,k]
  Tensor dscores;    // [T,E]
  Tensor dlogits;    // [T,E] (z-loss)
  Tensor dclean;     // [T,E] (the noisy gate's load loss, on the noise-free logits)
  Tensor draw_noise; // [T,E] (the noisy gate's load loss, on the noise projection)
  Tensor dscore_row; // [E]: a score gradient the same for every token (the per-expert terms: Switch, device-level)
};

class Router {
 public:
  virtual ~Router() = default;
  virtual int64_t num_experts() const = 0;
  // Slots per token in Routing::ids (k; E for expert choice).
  virtual int64_t slots_per_token() const = 0;
  // The experts a token really uses, on average (active parameters and MFU count these): its
  // slots for token choice; the capacity factor for expert choice.
  virtual double experts_per_token() const { return static_cast<double>(slots_per_token()); }
  // Whether a token-choice capacity (moe.capacity_factor > 0) drops slots of this router; false
  // where the router has a capacity of its own (expert choice).
  virtual bool capacity_dropping() const { return true; }
  // At most this many of the T * slots_per_token() slots get an expert (expert choice: its capacity).
  virtual int64_t max_routed_slots(int64_t tokens) const { return tokens * slots_per_token(); }
  // The aux-loss-free selection-bias buffer [E] (moe.expert_bias_rate), or -1 where there is none.
  virtual ParamId expert_bias_id() const { return -1; }
  virtual std::string name() const = 0;
  virtual Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const = 0;
  // Adds the router's input gradient into dx[T,d] and accumulates its parameter gradients.
  virtual void backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const = 0;
};

// What a router factory gets besides [moe]: the layer's shape (src/config/moe_shape.h) and place.
struct RouterSpec {
  int64_t d_model = 0, vocab_size = 0;
  int64_t num_experts = 0, top_k = 0;  // after fine-grained segmentation (MoeShape)
  int64_t layer = 0;                   // the model layer (hash tables per layer)
  double init_std = 0.02;
};

// Builds one router kind from [moe] (moe.router already this layer's); routing/router_registry.cpp
// holds one per kind of src/config/router_kinds.cpp.
using RouterFactory = std::unique_ptr<Router> (*)(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                                  const RouterSpec& spec);

}  // namespace moe

// The router kinds of moe.router and what each can do, declared once per kind (router_kinds.cpp):
// validation, `moe plan`, upcycling, the trainer and the model ask this table, never a name.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "src/config/config.h"
#include "src/config/moe_shape.h"

namespace moe {

// How a router's combine weights relate to moe.renormalize.
enum class Renormalization {
  never,     // the weights are not a distribution over the token's experts (scores, constants)
  optional,  // moe.renormalize decides whether the selected weights are rescaled to sum to 1
  always,    // the weights always sum to 1 over the token's experts: moe.renormalize = false is an error
};

// One router kind. The routing layer builds it (routing/router_registry.cpp, one factory line per
// kind) and a test checks that the built routers behave as declared here.
struct RouterKind {
  const char* name = "";          // the value of moe.router and moe.layer_routers
  bool learned = false;           // parameters: the router weight W_r[d,E]; produces scores and logits
                                  // [T,E], which the balancing terms (Switch, importance, z, ...) read
  bool noisy = false;             // a second learned projection W_noise[d,E] (noisy gating): the only
                                  // input of the load loss (moe.load_loss_coef)
  bool token_choice = true;       // tokens choose experts; false: experts choose tokens up to a
                                  // capacity (moe.capacity_factor > 0 required)
  bool hashed = false;            // a fixed hash configured by moe.hash_*: reads the batch's token ids
                                  // (and its targets with moe.hash_kind = "oracle")
  bool expert_bias = false;       // supports the aux-loss-free expert-bias update (moe.expert_bias_rate)
  bool capacity_dropping = false; // moe.capacity_factor > 0 drops slots beyond C*k*T/E per expert
  bool valid_under_tp = true;     // may run with parallel.tp > 1 (each TP rank routes a token slice)
  Renormalization renormalization = Renormalization::never;
  const char* k_key = nullptr;    // the key that sets how many experts a token uses (nullptr: fixed)
  // The experts a token really uses, on average (active parameters, FLOPs): m*k for top-k kinds,
  // 1 for hash, the capacity factor for expert choice.
  double (*experts_per_token)(const MoeConfig& moe, const MoeShape& shape) = nullptr;
};

// Every kind, in the order docs/config.md lists them.
const std::vector<RouterKind>& router_kinds();
// The kind called `name`, or nullptr.
const RouterKind* find_router_kind(std::string_view name);
// The kind called `name`; throws naming moe.router and the known kinds when there is none.
const RouterKind& router_kind(std::string_view name);
// "a, b or c": the kinds for which `has` is true (all kinds without it).
std::string router_kind_names(const std::function<bool(const RouterKind&)>& has = nullptr);

// Columns of a kind's routing ids per token: its experts per token for token choice, every
// expert for expert choice (ids[t,e] = e or -1).
int64_t routing_slots(const RouterKind& kind, const MoeConfig& moe, const MoeShape& shape);
// Whether the kind's combine weights are renormalised under `moe` (moe.renormalize applied).
bool renormalizes(const RouterKind& kind, const MoeConfig& moe);

// The router kind of MoE layer `moe_index` (the model's MoE layers counted from 0):
// moe.layer_routers[moe_index] when that list is set, else moe.router.
const RouterKind& moe_layer_router(const MoeConfig& moe, int64_t moe_index);
// The distinct kinds the MoE layers use (moe.layer_routers when set, else moe.router), in order.
std::vector<const RouterKind*> router_kinds_in_use(const MoeConfig& moe);
// Whether some MoE layer routes on the batch's targets (a hashed router with the oracle kind).
bool routes_on_targets(const MoeConfig& moe);

}  // namespace moe

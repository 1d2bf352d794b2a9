// The router registry: one factory per router kind of src/config/router_kinds.cpp, and every
// router make_router builds behaves as its kind declares (parameters, slots, experts per token,
// expert bias, capacity dropping, renormalised weights, scores, token ids).
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "routing/router_registry.h"
#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;

namespace {

constexpr int64_t k_d = 6, k_vocab = 16, k_experts = 4, k_seq = 4, k_tokens = 12;

// A config every kind accepts: expert choice gets a capacity, hash a seed.
MoeConfig config_for(const RouterKind& kind) {
  MoeConfig m;
  m.num_experts = k_experts;
  m.top_k = 2;
  m.router = kind.name;
  m.capacity_factor = kind.token_choice ? 0.0 : 1.5;
  m.hash_seed = 5;
  return m;
}

struct Built {
  ParamStore store;
  std::unique_ptr<Router> router;
};

std::unique_ptr<Built> build(const MoeConfig& m) {
  auto b = std::make_unique<Built>();
  const MoeShape shape = moe_shape(m);
  b->router = make_router(b->store, "r", m, RouterSpec{k_d, k_vocab, shape.num_experts, shape.top_k, 0, 0.5});
  b->store.allocate(Device::cpu(), DType::f64);
  b->store.initialize(7);
  return b;
}

bool has_param(const ParamStore& store, const std::string& name, bool buffer) {
  for (const ParamInfo& p : store.infos()) {
    if (p.name == name) return (p.kind == ParamKind::buffer) == buffer;
  }
  return false;
}

std::vector<int32_t> tokens() {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < k_tokens; ++i) t.push_back(static_cast<int32_t>((7 * i + 3) % k_vocab));
  return t;
}

// Each token's combine weights summed over its experts (slots with id -1 skipped).
std::vector<double> weight_sums(const Routing& r) {
  const std::vector<int32_t> ids = r.ids.to_vector<int32_t>();
  const std::vector<double> w = r.weights.to_vector<double>();
  const int64_t slots = r.ids.size(1);
  std::vector<double> sums(static_cast<size_t>(r.ids.size(0)), 0.0);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= 0) sums[i / static_cast<size_t>(slots)] += w[i];
  }
  return sums;
}

}  // namespace

TEST_CASE("every router kind has exactly one factory, and every factory a kind") {
  REQUIRE(router_entries().size() == router_kinds().size());
  for (const RouterKind& kind : router_kinds()) {
    INFO(kind.name);
    int factories = 0;
    for (const RouterEntry& e : router_entries()) factories += std::string(e.kind) == kind.name ? 1 : 0;
    REQUIRE(factories == 1);
  }
  for (const RouterEntry& e : router_entries()) REQUIRE(find_router_kind(e.kind) != nullptr);
  MoeConfig m;
  m.router = "switch";
  ParamStore store;
  REQUIRE_THROWS_WITH(make_router(store, "r", m, RouterSpec{k_d, k_vocab, k_experts, 1, 0, 0.5}),
                      Contains("moe.router = 'switch' is not one of: softmax_topk, "));
}

TEST_CASE("routers built by the registry behave as their kind declares") {
  const std::vector<int32_t> ids = tokens();
  for (const RouterKind& kind : router_kinds()) {
    for (bool bias : {false, true}) {
      INFO(kind.name << (bias ? " with moe.expert_bias_rate" : ""));
      MoeConfig m = config_for(kind);
      m.expert_bias_rate = bias ? 0.01 : 0.0;
      const MoeShape shape = moe_shape(m);
      auto b = build(m);
      const Router& r = *b->router;
      REQUIRE(r.num_experts() == shape.num_experts);
      REQUIRE(r.slots_per_token() == routing_slots(kind, m, shape));
      REQUIRE(r.experts_per_token() == kind.experts_per_token(m, shape));
      REQUIRE(r.capacity_dropping() == kind.capacity_dropping);
      REQUIRE(has_param(b->store, "r.weight", false) == kind.learned);
      REQUIRE(has_param(b->store, "r.noise_weight", false) == kind.noisy);
      REQUIRE((r.expert_bias_id() >= 0) == (bias && kind.expert_bias));
      REQUIRE(has_param(b->store, "r.expert_bias", true) == (bias && kind.expert_bias));
      if (!kind.learned) REQUIRE(b->store.infos().empty());  // no parameters at all

      Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 11);
      RouteInputs in{&ids, nullptr, k_seq, true, 3};
      RouterSaved saved;
      const Routing routing = r.route(x, in, saved);
      REQUIRE(routing.ids.size(1) == r.slots_per_token());
      REQUIRE(routing.scores.defined() == kind.learned);  // what the balancing terms read
      if (kind.hashed) {  // it reads the token ids
        RouterSaved none;
        REQUIRE_THROWS_WITH(r.route(x, RouteInputs{nullptr, nullptr, k_seq, true, 3}, none), Contains("tokens"));
      } else {
        RouterSaved blind;  // and nothing else reads them
        REQUIRE_NOTHROW(r.route(x, RouteInputs{nullptr, nullptr, k_seq, true, 3}, blind));
      }
      if (kind.token_choice) {  // every token has its experts (dropless here)
        for (int32_t id : routing.ids.to_vector<int32_t>()) REQUIRE(id >= 0);
      }
      // Renormalisation as declared: moe.renormalize = false cannot undo "always".
      if (kind.renormalization == Renormalization::always) {
        for (double s : weight_sums(routing)) REQUIRE(std::abs(s - 1.0) < 1e-12);
      }
    }
  }
}

TEST_CASE("moe.renormalize decides for the kinds that declare it optional") {
  const std::vector<int32_t> ids = tokens();
  for (const RouterKind& kind : router_kinds()) {
    if (kind.renormalization != Renormalization::optional) continue;
    INFO(kind.name);
    for (bool renormalize : {true, false}) {
      MoeConfig m = config_for(kind);
      m.renormalize = renormalize;
      auto b = build(m);
      RouterSaved saved;
      Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 11);
      const Routing routing = b->router->route(x, RouteInputs{&ids, nullptr, k_seq, true, 3}, saved);
      for (double s : weight_sums(routing)) {
        // Without renormalisation 2 of 4 softmax scores sum to less than 1.
        REQUIRE((renormalize ? std::abs(s - 1.0) < 1e-12 : s < 1.0 - 1e-6));
      }
    }
  }
}

// Tests of the effective MoE shape and the router-kind table (src/config/moe_shape.h,
// router_kinds.h), and of the validation rules that ask the table, with their messages.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/config/config_fields.h"
#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/util/check.h"

using Catch::Contains;
using Catch::StartsWith;
using namespace moe;

namespace {

Config parse_set(const std::vector<std::string>& overrides) { return parse_config("", "bad.toml", overrides); }

// The message after "--set <last override>: " (the key a rule blames was set last).
void require_error(const std::vector<std::string>& sets, const std::string& message) {
  INFO(sets.back());
  REQUIRE_THROWS_WITH(parse_set(sets), StartsWith("--set " + sets.back() + ": " + message));
}

MoeConfig moe_with(const std::string& router) {
  MoeConfig m;
  m.num_experts = 4;
  m.router = router;
  return m;
}

}  // namespace

TEST_CASE("moe_shape is the effective shape of fine-grained and shared experts") {
  MoeConfig m;
  m.num_experts = 4;
  m.top_k = 2;
  m.d_expert = 64;
  m.granularity = 2;
  m.num_shared_experts = 3;
  MoeShape s = moe_shape(m);
  CHECK(s == MoeShape{.num_experts = 8, .top_k = 4, .d_expert = 32, .num_shared = 3, .d_shared = 32});
  CHECK(s.shared_width() == 96);
  m.d_shared = 48;
  CHECK(moe_shape(m).d_shared == 48);
  CHECK(moe_shape(m).shared_width() == 144);
  m.granularity = 1;
  CHECK(moe_shape(m) == MoeShape{.num_experts = 4, .top_k = 2, .d_expert = 64, .num_shared = 3, .d_shared = 48});
  m.num_experts = 0;
  CHECK(moe_shape(m) == MoeShape{});  // a dense model
  m.num_experts = 4;
  m.granularity = 3;
  REQUIRE_THROWS_WITH(moe_shape(m), Contains("moe.d_expert = 64 is not divisible by moe.granularity = 3"));
  m.granularity = 0;
  REQUIRE_THROWS_WITH(moe_shape(m), Contains("moe.granularity = 0 must be at least 1"));
}

TEST_CASE("router kinds are found by name and describe what they route") {
  for (const RouterKind& kind : router_kinds()) {
    INFO(kind.name);
    REQUIRE(find_router_kind(kind.name) == &kind);
    REQUIRE(kind.experts_per_token != nullptr);
    REQUIRE((kind.learned || !kind.noisy));  // noise is a second projection beside the router weight
  }
  CHECK(find_router_kind("switch") == nullptr);
  REQUIRE_THROWS_WITH(router_kind("switch"), StartsWith("moe.router = 'switch' is not one of: softmax_topk, "));
  CHECK(router_kind_names([](const RouterKind& k) { return k.noisy; }) == "noisy_topk");

  MoeConfig m = moe_with("softmax_topk");
  m.top_k = 2;
  m.granularity = 2;
  m.capacity_factor = 1.5;
  const MoeShape shape = moe_shape(m);
  CHECK(routing_slots(router_kind("softmax_topk"), m, shape) == 4);  // m*k
  CHECK(routing_slots(router_kind("expert_choice"), m, shape) == 8);  // every expert: ids[t,e] = e or -1
  CHECK(router_kind("expert_choice").experts_per_token(m, shape) == 1.5);
  CHECK(routing_slots(router_kind("hash"), m, shape) == 1);
  CHECK(router_kind("hash").experts_per_token(m, shape) == 1.0);

  // moe.renormalize decides for softmax_topk only.
  for (bool renormalize : {true, false}) {
    m.renormalize = renormalize;
    CHECK(renormalizes(router_kind("softmax_topk"), m) == renormalize);
    CHECK(renormalizes(router_kind("topk_softmax"), m));
    CHECK(renormalizes(router_kind("sigmoid"), m));
    CHECK(renormalizes(router_kind("noisy_topk"), m));
    CHECK_FALSE(renormalizes(router_kind("expert_choice"), m));
    CHECK_FALSE(renormalizes(router_kind("hash"), m));
  }
}

TEST_CASE("the router of each MoE layer and the routers in use") {
  MoeConfig m = moe_with("softmax_topk");
  CHECK(std::string(moe_layer_router(m, 0).name) == "softmax_topk");
  CHECK(std::string(moe_layer_router(m, 5).name) == "softmax_topk");
  m.layer_routers = {"hash", "sigmoid", "hash"};
  CHECK(std::string(moe_layer_router(m, 1).name) == "sigmoid");
  CHECK(std::string(moe_layer_router(m, 2).name) == "hash");
  REQUIRE_THROWS_WITH(moe_layer_router(m, 3), Contains("MoE layer 3 has no entry in moe.layer_routers (3 entries)"));
  // moe.router is not used when moe.layer_routers is set.
  CHECK(router_kinds_in_use(m) == std::vector<const RouterKind*>{&router_kind("hash"), &router_kind("sigmoid")});

  // The oracle routes on the targets wherever a hashed router runs (the trainer marks its logs).
  m.hash_kind = "oracle";
  CHECK(routes_on_targets(m));
  m.layer_routers = {"softmax_topk"};
  CHECK_FALSE(routes_on_targets(m));
  m.router = "hash";
  CHECK_FALSE(routes_on_targets(m));  // moe.layer_routers overrides it
  m.layer_routers = {};
  CHECK(routes_on_targets(m));
  m.num_experts = 0;
  CHECK_FALSE(routes_on_targets(m));  // dense
  m.num_experts = 4;
  m.hash_kind = "random";
  CHECK_FALSE(routes_on_targets(m));
}

TEST_CASE("accepted-but-ignored router combinations are errors naming the keys") {
  const std::vector<std::string> moe4 = {"moe.num_experts=4"};
  auto with = [&moe4](std::vector<std::string> sets) {
    sets.insert(sets.begin(), moe4.begin(), moe4.end());
    return sets;
  };
  const std::string bias_routers = "softmax_topk, topk_softmax, sigmoid or noisy_topk";
  // The aux-loss-free bias exists only on routers that select by score.
  require_error(with({"moe.router=hash", "moe.expert_bias_rate=0.001"}),
                "moe.expert_bias_rate = 0.001 has no effect: moe.router = \"hash\" has no expert bias (the "
                "aux-loss-free bias update needs one of: " + bias_routers + ")");
  require_error(with({"moe.router=expert_choice", "moe.capacity_factor=1", "moe.expert_bias_rate=0.01"}),
                "moe.expert_bias_rate = 0.01 has no effect: moe.router = \"expert_choice\" has no expert bias");
  require_error(with({"moe.layer_routers=[\"hash\", \"expert_choice\"]", "moe.capacity_factor=1",
                      "moe.expert_bias_rate=0.01"}),
                "moe.expert_bias_rate = 0.01 has no effect: moe.layer_routers = [\"hash\", \"expert_choice\"] have "
                "no expert bias");
  for (const char* router : {"softmax_topk", "topk_softmax", "sigmoid", "noisy_topk"}) {
    CHECK_NOTHROW(parse_set(with({std::string("moe.router=") + router, "moe.expert_bias_rate=0.001"})));
  }
  // A layer that has the bias makes the rate count.
  CHECK_NOTHROW(parse_set(with({"moe.layer_routers=[\"hash\", \"sigmoid\"]", "moe.expert_bias_rate=0.001"})));

  // moe.renormalize = false with routers whose weights always sum to 1.
  for (const char* router : {"topk_softmax", "sigmoid", "noisy_topk"}) {
    require_error(with({std::string("moe.router=") + router, "moe.renormalize=false"}),
                  std::string("moe.renormalize = false has no effect: moe.router = \"") + router +
                      "\" always renormalises a token's weights to sum to 1 (moe.renormalize = false applies to: "
                      "softmax_topk)");
  }
  require_error(with({"moe.layer_routers=[\"topk_softmax\", \"sigmoid\"]", "moe.renormalize=false"}),
                "moe.renormalize = false has no effect: moe.layer_routers = [\"topk_softmax\", \"sigmoid\"] always "
                "renormalise a token's weights");
  // Where some layer honours it, or nothing is renormalised anyway, it stands.
  CHECK_NOTHROW(parse_set(with({"moe.layer_routers=[\"topk_softmax\", \"softmax_topk\"]", "moe.renormalize=false"})));
  CHECK_NOTHROW(parse_set(with({"moe.router=softmax_topk", "moe.renormalize=false"})));
  CHECK_NOTHROW(parse_set(with({"moe.router=hash", "moe.renormalize=false"})));
  CHECK_NOTHROW(parse_set(with({"moe.router=expert_choice", "moe.capacity_factor=1", "moe.renormalize=false"})));
  CHECK_NOTHROW(parse_set({"moe.router=sigmoid", "moe.renormalize=false"}));  // dense: no router at all

  // The file line of the key is named.
  REQUIRE_THROWS_WITH(parse_config("[moe]\nnum_experts = 4\nrouter = \"sigmoid\"\nrenormalize = false\n", "bad.toml"),
                      StartsWith("bad.toml:4: moe.renormalize = false has no effect"));
  REQUIRE_THROWS_WITH(parse_config("[moe]\nexpert_bias_rate = 0.1\nnum_experts = 4\nrouter = \"hash\"\n", "bad.toml"),
                      StartsWith("bad.toml:2: moe.expert_bias_rate = 0.1 has no effect"));
}

TEST_CASE("the rules that ask the router kinds have their messages") {
  require_error({"moe.num_experts=4", "moe.router=switch"},
                "moe.router = 'switch' is not one of: softmax_topk, topk_softmax, sigmoid, noisy_topk, ");
  require_error({"moe.num_experts=4", "moe.layer_routers=[\"hash\", \"gshard\"]"},
                "moe.layer_routers = 'gshard' is not one of: softmax_topk, ");
  require_error({"moe.num_experts=4", "moe.router=expert_choice"},
                "moe.router \"expert_choice\" needs moe.capacity_factor > 0 (each expert takes its c*T/E best "
                "tokens)");
  require_error({"moe.num_experts=4", "moe.load_loss_coef=0.1"},
                "moe.load_loss_coef needs a router with gating noise (noisy_topk) in every MoE layer (the load "
                "estimator uses the gating noise), not moe.router = \"softmax_topk\"");
  require_error({"moe.num_experts=4", "moe.layer_routers=[\"noisy_topk\", \"sigmoid\"]", "moe.load_loss_coef=0.1"},
                "moe.load_loss_coef needs a router with gating noise (noisy_topk) in every MoE layer");
  // moe.router is unused when every layer names its own.
  CHECK_NOTHROW(parse_set({"moe.num_experts=4", "moe.layer_routers=[\"noisy_topk\", \"noisy_topk\"]",
                           "moe.load_loss_coef=0.1"}));
  require_error({"moe.num_experts=4", "moe.router=hash", "moe.balance_scope=global_batch"},
                "moe.balance_scope = \"global_batch\" applies to the Switch loss (moe.aux_loss_coef) alone: turn "
                "the other balancing losses off, and use a token-choice router with scores (softmax_topk, "
                "topk_softmax, sigmoid or noisy_topk)");
  require_error({"moe.num_experts=4", "moe.router=hash", "moe.hash_kind=oracle"},
                "moe.hash_kind = \"oracle\" routes on the target token and leaks the answer: set "
                "moe.hash_allow_oracle = true to run it as an upper-bound probe");
  require_error({"moe.num_experts=4", "moe.router=hash", "moe.hash_kind=balanced"},
                "moe.hash_kind = \"balanced\" needs moe.hash_table (build it with `moe hash-table`)");
  CHECK_NOTHROW(parse_set({"moe.num_experts=4", "moe.hash_kind=oracle"}));  // no hashed router: nothing to leak
}

TEST_CASE("a router kind that is not valid under tensor parallelism is rejected there") {
  // Every kind of the table is valid under TP (docs/parallel.md: each rank routes its slice), so
  // the rule is checked on a kind declared here.
  const RouterKind slice_unsafe{.name = "slice_unsafe", .learned = true, .valid_under_tp = false,
                                .k_key = "moe.top_k",
                                .experts_per_token = [](const MoeConfig&, const MoeShape& s) {
                                  return static_cast<double>(s.top_k);
                                }};
  Config c;
  c.moe.num_experts = 4;
  config_internal::KeyOrigins at{"x.toml", {}};
  CHECK_NOTHROW(config_internal::validate_router_kinds({&slice_unsafe}, c, at));
  c.parallel.tp = 2;
  REQUIRE_THROWS_WITH(config_internal::validate_router_kinds({&slice_unsafe}, c, at),
                      StartsWith("x.toml: moe.router \"slice_unsafe\" cannot run with parallel.tp = 2"));
  CHECK_NOTHROW(config_internal::validate_router_kinds({&router_kind("expert_choice")}, [&] {
    Config e = c;
    e.moe.capacity_factor = 1;
    return e;
  }(), at));
}

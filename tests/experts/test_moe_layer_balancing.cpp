// The MoE layer's balancing terms: every term on the scores' device against the host f64
// reference on the layer's own routing (values and gradients), their preconditions, and which
// slots the Switch loss counts under capacity dropping (moe.aux_count).
#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "tests/experts/moe_layer_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using namespace moe::layer_test;
using test::f64_tensor;

TEST_CASE("MoE layer: every balancing term runs on the device and equals the host reference on the layer's routing",
          "[experts][moe][balancing]") {
  using D = ops::DropOrder;
  const BalancingConfig all_but_load{.switch_coef = 0.1, .importance_coef = 0.2, .z_coef = 0.05, .seq_coef = 0.1,
                                     .device_coef = 0.1, .device_groups = 2};
  BalancingConfig every_term = all_but_load;
  every_term.load_coef = 0.3;
  BalancingConfig kept = all_but_load;
  kept.aux_count = AuxCount::kept;
  auto s = GENERATE_COPY(
      LayerSpec{.name = "noisy_topk, every term", .router = "noisy_topk", .balancing = every_term},
      LayerSpec{.name = "sigmoid + bias skewed onto experts 0 and 1 (2 and 3 empty), every term but load",
                .router = "sigmoid", .balancing = all_but_load, .bias = true},
      LayerSpec{.name = "capacity by position (slots dropped), Switch on routed slots", .capacity_factor = 0.75,
                .drop_order = D::by_position, .balancing = all_but_load},
      LayerSpec{.name = "capacity by probability, Switch on kept slots", .router = "topk_softmax",
                .capacity_factor = 0.75, .balancing = kept},
      LayerSpec{.name = "Switch with its sums kept for the global batch, beside the other terms", .balancing = all_but_load,
                .pool_sums = true});
  INFO("variant: " << s.name);
  auto layer = build_layer(s, 151);
  if (s.bias) {  // every token's two slots go to experts 0 and 1
    ParamStore& store = layer->store;
    store.load_master_from_host(store.find("moe.router.expert_bias"), f64_tensor({10, 9, -10, -10}, {k_experts}));
  }
  const auto tokens = batch_tokens(152);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 77};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 153, Device::cpu(), -2.0, 2.0);
  MoeLayerSaved saved;
  layer->moe->forward(x, inputs, saved);
  const RouterSaved& r = saved.router;
  const auto kept_ids = saved.ids.to_vector<int32_t>();
  // (Not the initializer {k_tokens, k_tokens, 0, 0}: GCC 12.2 with -march=native (AVX-512) stores
  // such a constant as a broadcast of its first element.)
  std::vector<int64_t> skewed(static_cast<size_t>(k_experts), 0);
  skewed[0] = skewed[1] = k_tokens;
  if (s.bias) REQUIRE(count_ids(kept_ids) == skewed);
  if (s.capacity_factor > 0) REQUIRE(saved.stats.dropped > 0);

  BalanceInputs in;
  in.tokens = k_tokens;
  in.experts = k_experts;
  in.slots = saved.ids.size(1);
  in.seq_len = k_seq_len;
  in.scores = r.routing.scores.to_vector<double>();
  in.logits = r.routing.logits.to_vector<double>();
  in.weights = saved.weights.to_vector<double>();
  in.ids = kept_ids;
  in.counts = count_ids(kept_ids);
  in.routed_counts = count_ids(r.routing.ids.to_vector<int32_t>());
  if (r.clean.defined()) {
    in.clean = r.clean.to_vector<double>();
    in.raw_noise = r.raw_noise.to_vector<double>();
    in.normal = r.normal.to_vector<double>();
  }
  const BalanceResult host = compute_balancing(in, s.balancing);
  REQUIRE(keys(saved.stats.balance) == enabled_terms(s.balancing));
  for (const auto& [name, value] : host.terms) {
    INFO("term " << name);
    REQUIRE(std::abs(saved.stats.balance.at(name) - value) <= 1e-12 * std::abs(value));
  }
  REQUIRE(std::abs(saved.stats.aux_loss - host.total) <= 1e-12 * host.total);
  // The scores' gradient: the per-token terms' [T,E] plus the per-expert terms' row for every token.
  const RouterGrads& g = saved.balance_grads;
  std::vector<double> dscores = g.dscores.defined() ? g.dscores.to_vector<double>()
                                                    : std::vector<double>(static_cast<size_t>(k_tokens * k_experts));
  REQUIRE(saved.score_grad_row.defined());
  const auto row = saved.score_grad_row.to_vector<double>();
  for (int64_t t = 0; t < k_tokens; ++t)
    for (int64_t e = 0; e < k_experts; ++e)
      dscores[static_cast<size_t>(t * k_experts + e)] += row[static_cast<size_t>(e)];
  test::require_close(dscores, host.dscores, 1e-14, 1e-12, "dscores");
  test::require_close(g.dlogits.to_vector<double>(), host.dlogits, 1e-14, 1e-12, "dlogits");
  test::require_close(g.dweights.to_vector<double>(), host.dweights, 1e-14, 1e-12, "dweights");
  if (s.balancing.load_coef > 0) {
    test::require_close(g.dclean.to_vector<double>(), host.dclean, 1e-14, 1e-12, "dclean");
    test::require_close(g.draw_noise.to_vector<double>(), host.draw_noise, 1e-14, 1e-12, "draw_noise");
  } else {
    REQUIRE(!g.dclean.defined());
  }
  // The sums the trainer pools (balance_scope = global_batch) are kept, on the device, only then.
  REQUIRE(saved.stats.pool.score_sums.defined() == (s.pool_sums && s.balancing.switch_coef > 0));
}

TEST_CASE("MoE layer: a balancing term's precondition is checked before it runs on the device",
          "[experts][moe][balancing]") {
  LayerSpec spec{.balancing = {.device_coef = 0.1, .device_groups = 3}};
  auto layer = build_layer(spec, 161);
  const auto tokens = batch_tokens(162);
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 163, Device::cpu(), -2.0, 2.0);
  MoeLayerSaved saved;
  REQUIRE_THROWS_WITH(layer->moe->forward(x, RouteInputs{&tokens, nullptr, k_seq_len, true, 0}, saved),
                      Catch::Contains("balancing: device_groups = 3 does not divide experts = 4"));
  LayerSpec seq{.balancing = {.seq_coef = 0.1}};
  auto seq_layer = build_layer(seq, 164);
  REQUIRE_THROWS_WITH(seq_layer->moe->forward(x, RouteInputs{&tokens, nullptr, 5, true, 0}, saved),
                      Catch::Contains("balancing: seq_len = 5, expected >= 1 and dividing tokens = 12"));
}

TEST_CASE("aux_count: the Switch loss counts the routed or the kept slots under capacity dropping",
          "[experts][moe][capacity][aux_count]") {
  const auto tokens = batch_tokens(141);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 0};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 142, Device::cpu(), -2.0, 2.0);
  // The Switch term by hand from the layer's own routing: 0.1 * E * sum_i f_i P_i,
  // f_i = counts_i / (k T), P_i = mean score; and its gradient row 0.1 * E * f_i / T.
  auto by_hand = [](const std::vector<int64_t>& counts, const std::vector<double>& scores, std::vector<double>& row) {
    double value = 0;
    row.assign(static_cast<size_t>(k_experts), 0.0);
    for (int64_t e = 0; e < k_experts; ++e) {
      double p = 0;
      for (int64_t t = 0; t < k_tokens; ++t) p += scores[static_cast<size_t>(t * k_experts + e)] / k_tokens;
      const double f = static_cast<double>(counts[static_cast<size_t>(e)]) / (2.0 * k_tokens);
      value += 0.1 * k_experts * f * p;
      row[static_cast<size_t>(e)] = 0.1 * k_experts * f / k_tokens;
    }
    return value;
  };
  std::map<AuxCount, double> values;
  for (AuxCount aux_count : {AuxCount::routed, AuxCount::kept}) {
    const bool routed = aux_count == AuxCount::routed;
    INFO((routed ? "routed" : "kept"));
    // Capacity ceil(0.5 * 2 * 12 / 4) = 3 of 24 slots per expert; seq and z ride along on the host.
    for (bool pool : {false, true}) {  // the term alone, and with its sums kept for the global batch
      INFO((pool ? "sums kept" : "term alone"));
      LayerSpec spec{.capacity_factor = 0.5,
                     .balancing = {.switch_coef = 0.1, .z_coef = 0.01, .seq_coef = 0.1, .aux_count = aux_count},
                     .pool_sums = pool};
      auto layer = build_layer(spec, 143);
      MoeLayerSaved saved;
      layer->moe->forward(x, inputs, saved, true);
      REQUIRE(saved.stats.dropped > 0);
      const auto routed_counts = count_ids(saved.router.routing.ids.to_vector<int32_t>());
      const auto kept_counts = count_ids(saved.ids.to_vector<int32_t>());
      REQUIRE(routed_counts != kept_counts);
      REQUIRE(saved.stats.tokens_per_expert == kept_counts);  // the load metric stays the kept slots
      if (pool) {  // kept for the trainer: the score sums and the ids the term counts
        const MoeLayerStats::PoolSums& p = saved.stats.pool;
        REQUIRE(count_ids(p.ids.to_vector<int32_t>()) == (routed ? routed_counts : kept_counts));
        REQUIRE(p.tokens == k_tokens);
        REQUIRE(p.slots == 2);
        std::vector<double> column(static_cast<size_t>(k_experts), 0.0);
        const auto scores = saved.router.routing.scores.to_vector<double>();
        for (int64_t t = 0; t < k_tokens; ++t)
          for (int64_t e = 0; e < k_experts; ++e) column[static_cast<size_t>(e)] += scores[static_cast<size_t>(t * k_experts + e)];
        test::require_close(p.score_sums.to_vector<double>(), column, 1e-14, 1e-12, "pooled score sums");
      } else {
        REQUIRE(!saved.stats.pool.score_sums.defined());
      }
      std::vector<double> row;
      const double expected =
          by_hand(routed ? routed_counts : kept_counts, saved.router.routing.scores.to_vector<double>(), row);
      REQUIRE(std::abs(saved.stats.balance.at("switch") - expected) < 1e-14);
      test::require_close(saved.score_grad_row.to_vector<double>(), row, 1e-15, 1e-12, "Switch gradient row");
      REQUIRE(keys(saved.stats.balance) == std::vector<std::string>{"seq", "switch", "z"});
      values[aux_count] = saved.stats.balance.at("switch");
    }
  }
  // Every expert is full (3 kept slots each): the kept counts look perfectly balanced, and the
  // kept-slot term is 0.1 * E * sum_i (3 / 24) P_i = 0.05 whatever the scores; the routed one sees
  // the imbalance.
  REQUIRE(std::abs(values.at(AuxCount::kept) - 0.05) < 1e-14);
  REQUIRE(values.at(AuxCount::routed) > 0.05 + 1e-3);
}

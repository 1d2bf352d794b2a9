// The balancing-term registry: every term reads only the inputs it declares and writes only their
// gradients, its TP rule matches its sums path, the config maps onto it; moe.aux_count (Switch f_i
// before or after capacity dropping) by hand; the TP check and the per-expert sums.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>

#include "routing/balancing_terms.h"
#include "tests/routing/balancing_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;

namespace {

// T tokens, E experts, top-k of softmax scores with every input filled (noisy-gating inputs random).
BalanceInputs full_inputs(int64_t T, int64_t E, int64_t k, int64_t seq_len, uint64_t seed) {
  BalanceInputs in = test::random_routing(T, E, k, seq_len, seed);
  in.routed_counts = in.counts;
  in.routed_counts[0] += 3;  // as if three slots routed to expert 0 had been dropped
  return in;
}

// `in` with every input `reads` does not name cleared.
BalanceInputs only_declared(BalanceInputs in, uint32_t reads) {
  namespace bi = balance_input;
  if (!(reads & bi::scores)) in.scores.clear();
  if (!(reads & bi::logits)) in.logits.clear();
  if (!(reads & bi::weights)) in.weights.clear();
  if (!(reads & bi::ids)) in.ids.clear();
  if (!(reads & bi::counts)) in.counts.clear();
  if (!(reads & bi::routed_counts)) in.routed_counts.clear();
  if (!(reads & bi::noise)) in.clean.clear(), in.raw_noise.clear(), in.normal.clear();
  if (!(reads & bi::seq_len)) in.seq_len = 0;
  return in;
}

BalancingConfig only(const BalancingTerm& term, AuxCount aux_count) {
  BalancingConfig c;
  c.device_groups = 2;
  c.aux_count = aux_count;
  c.*term.coef = 0.1;
  return c;
}

}  // namespace

TEST_CASE("registry: unique names and keys; a TP rule of sum_statistics exactly with a sums path",
          "[balancing][registry]") {
  const auto& terms = balancing_terms();
  REQUIRE(terms.size() == 6);
  std::set<std::string> names, coefs, keys;
  for (const BalancingTerm& term : terms) {
    INFO(term.name);
    names.insert(term.name);
    coefs.insert(term.coef_name);
    keys.insert(term.config_key);
    REQUIRE(term.coef != nullptr);
    REQUIRE(term.config_coef != nullptr);
    REQUIRE(term.inputs != nullptr);
    REQUIRE(term.compute != nullptr);
    // A sum-statistics term's gradient is one per-expert row (what the TP and global-batch pooling replace).
    REQUIRE((term.tp != TpRule::sum_statistics || term.grad_per_expert));
    REQUIRE(&balancing_term(term.name) == &term);
  }
  REQUIRE(names == std::set<std::string>{"switch", "importance", "load", "z", "seq", "device"});
  REQUIRE(coefs.size() == terms.size());
  REQUIRE(keys.size() == terms.size());
  REQUIRE_THROWS_WITH(balancing_term("entropy"), Contains("balancing: no term called 'entropy' (known: switch, "
                                                          "importance, load, z, seq, device)"));
}

TEST_CASE("registry: each term reads only its declared inputs and writes only their gradients",
          "[balancing][registry]") {
  namespace bi = balance_input;
  const BalanceInputs full = full_inputs(6, 4, 2, 3, 71);
  for (AuxCount aux_count : {AuxCount::routed, AuxCount::kept}) {
    for (const BalancingTerm& term : balancing_terms()) {
      INFO(term.name << (aux_count == AuxCount::routed ? " (routed)" : " (kept)"));
      const BalancingConfig config = only(term, aux_count);
      const uint32_t reads = term.inputs(config);
      BalanceResult with_all = compute_balancing(full, config);
      BalanceResult declared = compute_balancing(only_declared(full, reads), config);
      REQUIRE(declared.terms.size() == 1);
      REQUIRE(declared.terms.at(term.name) > 0);
      REQUIRE(declared.total == with_all.total);
      REQUIRE(declared.dscores == with_all.dscores);
      REQUIRE(declared.dlogits == with_all.dlogits);
      REQUIRE(declared.dweights == with_all.dweights);
      REQUIRE(declared.dclean == with_all.dclean);
      REQUIRE(declared.draw_noise == with_all.draw_noise);
      REQUIRE(declared.dscores.empty() == !(reads & bi::scores));
      REQUIRE(declared.dlogits.empty() == !(reads & bi::logits));
      REQUIRE(declared.dweights.empty() == !(reads & bi::weights));
      REQUIRE(declared.dclean.empty() == !(reads & bi::noise));
      REQUIRE(declared.draw_noise.empty() == !(reads & bi::noise));
    }
  }
  // Only the Switch term reads the counts before dropping, and only when aux_count = routed.
  for (const BalancingTerm& term : balancing_terms()) {
    INFO(term.name);
    REQUIRE(!term.reads(only(term, AuxCount::kept), bi::routed_counts));
    REQUIRE(term.reads(only(term, AuxCount::routed), bi::routed_counts) == (std::string(term.name) == "switch"));
  }
}

TEST_CASE("registry: the Switch term gives the same value and gradient from its sums", "[balancing][registry]") {
  const BalanceInputs in = full_inputs(7, 5, 2, 7, 81);
  auto at = [](int64_t t, int64_t e) { return static_cast<size_t>(t * 5 + e); };
  ExpertSums sums;
  sums.score_sums.assign(5, 0.0);
  for (int64_t t = 0; t < 7; ++t)
    for (int64_t e = 0; e < 5; ++e) sums.score_sums[static_cast<size_t>(e)] += in.scores[at(t, e)];
  sums.counts = in.counts;
  sums.routed_counts = in.routed_counts;
  sums.tokens = 7;
  sums.slots = 2;
  for (const BalancingTerm& term : balancing_terms()) {
    if (term.tp != TpRule::sum_statistics) continue;
    REQUIRE(std::string(term.name) == "switch");  // the one sum-statistics term switch_loss computes
    for (AuxCount aux_count : {AuxCount::routed, AuxCount::kept}) {
      INFO(term.name);
      const BalancingConfig config = only(term, aux_count);
      BalanceResult host = compute_balancing(in, config);
      SwitchLoss from_sums = switch_loss(sums, config);
      REQUIRE(std::abs(from_sums.value - host.terms.at(term.name)) < 1e-15);
      for (int64_t t = 0; t < 7; ++t)
        for (int64_t e = 0; e < 5; ++e)
          REQUIRE(std::abs(host.dscores[at(t, e)] - from_sums.grad_per_expert[static_cast<size_t>(e)]) < 1e-15);
    }
  }
}

TEST_CASE("aux_count: the Switch f_i counts the slots before or after capacity dropping", "[balancing][aux_count]") {
  // T = 4, E = 3, k = 1. Tokens 0-2 choose expert 0, token 3 expert 1; capacity 1 drops tokens 1
  // and 2: routed counts [3, 1, 0], kept counts [1, 1, 0].
  BalanceInputs in;
  in.tokens = 4, in.experts = 3, in.slots = 1, in.seq_len = 4;
  in.scores = {0.6, 0.3, 0.1, 0.5, 0.2, 0.3, 0.7, 0.2, 0.1, 0.2, 0.7, 0.1};
  in.ids = {0, -1, -1, 1};
  in.counts = {1, 1, 0};
  in.routed_counts = {3, 1, 0};
  BalancingConfig config;
  config.switch_coef = 0.01;
  // P = [2.0, 1.4, 0.6] / 4 = [0.5, 0.35, 0.15].
  SECTION("routed (the default): f = [3/4, 1/4, 0]") {
    REQUIRE(config.aux_count == AuxCount::routed);
    // sum f P = 0.375 + 0.0875 = 0.4625; L = 0.01 * 3 * 0.4625 = 0.013875
    BalanceResult r = compute_balancing(in, config);
    CHECK(r.terms.at("switch") == Approx(0.013875).epsilon(1e-12));
    // dscores[t,i] = alpha E f_i / T = 0.03 * f_i / 4
    test::require_close(r.dscores, {0.005625, 0.001875, 0, 0.005625, 0.001875, 0, 0.005625, 0.001875, 0, 0.005625,
                                    0.001875, 0},
                        1e-15, 1e-12, "dscores (routed)");
  }
  SECTION("kept: f = [1/4, 1/4, 0], the old count") {
    config.aux_count = AuxCount::kept;
    // sum f P = 0.125 + 0.0875 = 0.2125; L = 0.01 * 3 * 0.2125 = 0.006375
    BalanceResult r = compute_balancing(in, config);
    CHECK(r.terms.at("switch") == Approx(0.006375).epsilon(1e-12));
    test::require_close(r.dscores, {0.001875, 0.001875, 0, 0.001875, 0.001875, 0, 0.001875, 0.001875, 0, 0.001875,
                                    0.001875, 0},
                        1e-15, 1e-12, "dscores (kept)");
  }
  SECTION("nothing dropped: routed_counts may be left empty, both settings agree") {
    in.routed_counts.clear();
    const double routed = compute_balancing(in, config).total;
    config.aux_count = AuxCount::kept;
    CHECK(compute_balancing(in, config).total == routed);
    CHECK(routed == Approx(0.006375).epsilon(1e-12));
  }
  SECTION("bad routed counts") {
    in.routed_counts = {0, 1, 0};
    REQUIRE_THROWS_WITH(compute_balancing(in, config),
                        Contains("balancing: routed_counts[0] = 0 is less than counts[0] = 1 (an expert keeps at most "
                                 "the slots routed to it)"));
    in.routed_counts = {3, 1};
    REQUIRE_THROWS_WITH(compute_balancing(in, config),
                        Contains("balancing: routed_counts has 2 values, expected E = 3"));
    ExpertSums sums{{2.0, 1.4, 0.6}, {1, 1, 0}, {}, 4, 1};
    REQUIRE_THROWS_WITH(switch_loss(sums, config),
                        Contains("switch_loss: aux_count = routed needs 3 counts before capacity dropping, got 0"));
  }
}

TEST_CASE("balancing_config maps every registered key; aux_count names", "[balancing][registry][config]") {
  MoeConfig moe;
  double value = 0.5;
  for (const BalancingTerm& term : balancing_terms()) moe.*term.config_coef = (value += 0.25);
  moe.device_groups = 3;
  moe.aux_count = "kept";
  BalancingConfig c = balancing_config(moe);
  for (const BalancingTerm& term : balancing_terms()) {
    INFO(term.name);
    REQUIRE(c.*term.coef == moe.*term.config_coef);
  }
  REQUIRE(c.device_groups == 3);
  REQUIRE(c.aux_count == AuxCount::kept);
  REQUIRE(balancing_config(MoeConfig{}).aux_count == AuxCount::routed);  // the config default
  REQUIRE(BalancingConfig{}.aux_count == AuxCount::routed);
  REQUIRE(aux_count_from_name("routed") == AuxCount::routed);
  moe.aux_count = "dropped";
  REQUIRE_THROWS_WITH(balancing_config(moe), Contains("moe.aux_count = 'dropped' is not one of: routed, kept"));
}

TEST_CASE("only_terms keeps the named coefficients; check_balancing_tp follows each term's rule",
          "[balancing][registry][tp]") {
  BalancingConfig all;
  all.switch_coef = 0.1, all.importance_coef = 0.2, all.load_coef = 0.3, all.z_coef = 0.4, all.seq_coef = 0.5;
  all.device_coef = 0.6, all.device_groups = 2, all.aux_count = AuxCount::kept;
  BalancingConfig z = only_terms(all, {&balancing_term("z")});
  REQUIRE(z.z_coef == 0.4);
  REQUIRE(z.switch_coef == 0);
  REQUIRE(z.device_coef == 0);
  REQUIRE(z.device_groups == 2);
  REQUIRE(z.aux_count == AuxCount::kept);
  REQUIRE(enabled_balancing_terms(z) == std::vector<const BalancingTerm*>{&balancing_term("z")});

  BalancingConfig tp_safe = only_terms(all, {&balancing_term("switch"), &balancing_term("z"), &balancing_term("seq")});
  REQUIRE_NOTHROW(check_balancing_tp(tp_safe, 2, "MoE layer 'l'"));
  REQUIRE_NOTHROW(check_balancing_tp(all, 1, "MoE layer 'l'"));
  for (const char* name : {"importance", "load", "device"}) {
    INFO(name);
    const BalancingTerm& term = balancing_term(name);
    REQUIRE(term.tp == TpRule::not_allowed);
    REQUIRE_THROWS_WITH(check_balancing_tp(only_terms(all, {&term}), 2, "MoE layer 'l'"),
                        Contains(std::string("MoE layer 'l': ") + term.config_key) &&
                            Contains("must be 0 under tensor parallelism (parallel.tp = 2): each rank routes a slice "
                                     "of the tokens") &&
                            Contains("use moe.aux_loss_coef, moe.z_loss_coef or moe.seq_aux_loss_coef"));
  }
}


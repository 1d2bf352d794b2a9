// The balancing terms on the device (BalancingTerm::on_device through the ops, CPU backend here;
// tests/cuda/test_cuda_balance.cpp runs the GPU against it) against the host reference
// compute_balancing: value and every gradient, on random and skewed routings, in f32 and f64;
// the expert counts, the bias update and the ops' errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "routing/balancing_terms.h"
#include "src/ops/ops.h"
#include "tests/routing/balancing_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;

namespace {

// How the slots are spread over the experts.
enum class Spread {
  random,       // top-k of the scores
  one_expert,   // k = 1: every token to expert 0, the other experts empty
  two_experts,  // k = 2: every token to experts 0 and 1, the other experts empty
  dropped,      // top-k, then every third slot dropped (-1); the routed counts still see them
};

// T tokens over E experts with k slots (test::random_routing), then spread as asked; under a
// skewed spread expert 0 is far ahead in the noisy gating too. `routed` keeps the ids before
// dropping (the Switch term's with aux_count = routed).
struct Routed {
  BalanceInputs in;
  std::vector<int32_t> routed;
};
Routed routing_inputs(int64_t T, int64_t E, int64_t k, int64_t seq_len, Spread spread, uint64_t seed) {
  BalanceInputs in = test::random_routing(T, E, k, seq_len, seed);
  if (spread == Spread::one_expert || spread == Spread::two_experts) {
    for (int64_t t = 0; t < T; ++t) {
      in.clean[static_cast<size_t>(t * E)] += 6.0;
      for (int64_t q = 0; q < k; ++q) in.ids[static_cast<size_t>(t * k + q)] = static_cast<int32_t>(q);
    }
  }
  const std::vector<int32_t> routed = in.ids;
  if (spread == Spread::dropped) {
    for (size_t n = 2; n < in.ids.size(); n += 3) in.ids[n] = -1, in.weights[n] = 0.0;
  }
  in.counts.assign(static_cast<size_t>(E), 0);
  in.routed_counts.assign(static_cast<size_t>(E), 0);
  for (size_t n = 0; n < in.ids.size(); ++n) {
    if (in.ids[n] >= 0) ++in.counts[static_cast<size_t>(in.ids[n])];
    ++in.routed_counts[static_cast<size_t>(routed[n])];
  }
  return {in, routed};
}

// Every floating input rounded through `dtype` (f32: both paths then read the same numbers).
BalanceInputs rounded(BalanceInputs in, DType dtype) {
  if (dtype == DType::f64) return in;
  for (auto* v : {&in.scores, &in.logits, &in.weights, &in.clean, &in.raw_noise, &in.normal})
    for (double& x : *v) x = static_cast<double>(static_cast<float>(x));
  return in;
}

Tensor on_cpu(const std::vector<double>& v, const Shape& shape, DType dtype) {
  return dtype == DType::f64 ? Tensor::from_vector(v, shape, DType::f64)
                             : Tensor::from_vector(std::vector<float>(v.begin(), v.end()), shape, DType::f32);
}

struct DeviceRun {
  double value = 0;
  std::vector<double> dscores, dlogits, dweights, dclean, draw_noise;  // dscores includes the per-expert row
};

// counts i64[E] of the ids >= 0.
Tensor counts_of(const std::vector<int32_t>& ids, int64_t experts) {
  std::vector<int64_t> counts(static_cast<size_t>(experts), 0);
  for (int32_t id : ids)
    if (id >= 0) ++counts[static_cast<size_t>(id)];
  return Tensor::from_vector(counts, {experts}, DType::i64);
}

// One term through its on_device function on CPU tensors of `dtype`. With router_sums the inputs
// also carry what a top-k router makes in its own pass (score sums, routed counts, and the kept
// counts where nothing was dropped), which the per-expert terms then read instead.
DeviceRun run_on_device(const BalancingTerm& term, const BalanceInputs& in, const std::vector<int32_t>& routed,
                        const BalancingConfig& config, DType dtype, bool router_sums = false) {
  const int64_t T = in.tokens, E = in.experts, k = in.slots;
  DeviceBalanceInputs d;
  d.scores = on_cpu(in.scores, {T, E}, dtype);
  d.logits = on_cpu(in.logits, {T, E}, dtype);
  d.weights = on_cpu(in.weights, {T, k}, dtype);
  d.kept_ids = Tensor::from_vector(in.ids, {T, k}, DType::i32);
  d.routed_ids = Tensor::from_vector(routed, {T, k}, DType::i32);
  d.clean = on_cpu(in.clean, {T, E}, dtype);
  d.raw_noise = on_cpu(in.raw_noise, {T, E}, dtype);
  d.normal = on_cpu(in.normal, {T, E}, dtype);
  d.seq_len = in.seq_len;
  if (router_sums) {
    d.score_sums = Tensor::empty({E}, dtype);
    ops::column_sum(d.scores, d.score_sums);
    d.routed_counts = counts_of(routed, E);
    if (routed == in.ids) d.kept_counts = d.routed_counts;
  }
  DeviceBalanceGrads g;
  g.dscores = Tensor::zeros({T, E}, dtype);
  g.dlogits = Tensor::zeros({T, E}, dtype);
  g.dweights = Tensor::zeros({T, k}, dtype);
  g.dclean = Tensor::zeros({T, E}, dtype);
  g.draw_noise = Tensor::zeros({T, E}, dtype);
  g.score_row = Tensor::zeros({E}, dtype);
  Tensor value = Tensor::from_vector(std::vector<double>{std::nan("")}, {1}, DType::f64);
  term.on_device(d, config, value, g);
  DeviceRun out;
  out.value = value.to_vector<double>()[0];
  out.dscores = g.dscores.to_vector<double>();
  const std::vector<double> row = g.score_row.to_vector<double>();
  REQUIRE((term.grad_per_expert || test::max_abs(row) == 0.0));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) out.dscores[static_cast<size_t>(t * E + e)] += row[static_cast<size_t>(e)];
  out.dlogits = g.dlogits.to_vector<double>();
  out.dweights = g.dweights.to_vector<double>();
  out.dclean = g.dclean.to_vector<double>();
  out.draw_noise = g.draw_noise.to_vector<double>();
  return out;
}

// got within rtol of ref, elementwise, with an absolute floor of rtol times ref's largest entry
// (gradients that cancel to near zero carry the rounding of their larger terms).
void require_relative(const std::vector<double>& got, const std::vector<double>& ref, double rtol,
                      const std::string& what) {
  const std::vector<double> want = ref.empty() ? std::vector<double>(got.size(), 0.0) : ref;
  test::require_close(got, want, rtol * test::max_abs(want) + 1e-300, rtol, what);
}

void compare_term(const BalancingTerm& term, Spread spread, int64_t T, int64_t E, int64_t k, int64_t seq_len,
                  AuxCount aux_count, uint64_t seed) {
  BalancingConfig config;
  config.device_groups = E % 2 == 0 ? 2 : 1;
  config.aux_count = aux_count;
  config.*term.coef = 0.3;
  const Routed r = routing_inputs(T, E, k, seq_len, spread, seed);
  const BalanceInputs& raw = r.in;
  const std::vector<int32_t>& routed = r.routed;
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(term.name << " " << dtype_name(dtype));
    BalanceInputs in = rounded(raw, dtype);
    if (aux_count == AuxCount::kept || spread != Spread::dropped) in.routed_counts.clear();  // nothing else dropped
    const BalanceResult host = compute_balancing(in, config);
    for (bool router_sums : {false, true}) {
      INFO((router_sums ? "with" : "without") << " the router's sums and counts");
      const DeviceRun dev = run_on_device(term, in, routed, config, dtype, router_sums);
      const double rtol = dtype == DType::f32 ? 1e-5 : 1e-12;
      require_relative({dev.value}, {host.terms.at(term.name)}, rtol, "value");
      require_relative(dev.dscores, host.dscores, rtol, "dscores");
      require_relative(dev.dlogits, host.dlogits, rtol, "dlogits");
      require_relative(dev.dweights, host.dweights, rtol, "dweights");
      require_relative(dev.dclean, host.dclean, rtol, "dclean");
      require_relative(dev.draw_noise, host.draw_noise, rtol, "draw_noise");
    }
  }
}

}  // namespace

TEST_CASE("balancing on the device equals the host reference for every term, random and skewed routings",
          "[balancing][device]") {
  struct Case {
    const char* name;
    Spread spread;
    int64_t T, E, k, seq_len;
  };
  const Case c = GENERATE(Case{"random top-2", Spread::random, 12, 6, 2, 4},
                          Case{"random top-3, one sequence of 7", Spread::random, 7, 5, 3, 7},
                          Case{"all to expert 0 (k = 1)", Spread::one_expert, 12, 4, 1, 3},
                          Case{"all to experts 0 and 1 (k = 2)", Spread::two_experts, 10, 6, 2, 5},
                          Case{"top-2 with dropped slots", Spread::dropped, 12, 4, 2, 6});
  for (const BalancingTerm& term : balancing_terms()) {
    for (AuxCount aux_count : {AuxCount::routed, AuxCount::kept}) {
      INFO(c.name << (aux_count == AuxCount::routed ? " (routed)" : " (kept)"));
      compare_term(term, c.spread, c.T, c.E, c.k, c.seq_len, aux_count, 40 + static_cast<uint64_t>(c.T));
    }
  }
}

TEST_CASE("balancing on the device: an empty micro-batch gives 0 for every term", "[balancing][device]") {
  for (const BalancingTerm& term : balancing_terms()) {
    INFO(term.name);
    BalancingConfig config;
    config.device_groups = 2;
    config.*term.coef = 0.3;
    BalanceInputs in;
    in.experts = 4, in.slots = 2, in.seq_len = 4;
    const DeviceRun dev = run_on_device(term, in, {}, config, DType::f32);
    REQUIRE(dev.value == 0.0);
  }
}

TEST_CASE("count_experts adds each expert's slots; update_expert_bias follows the host rule and skips on NaN",
          "[balancing][device]") {
  Tensor counts = Tensor::from_vector(std::vector<int64_t>{5, 0, 0, 1}, {4}, DType::i64);
  ops::count_experts(Tensor::from_vector(std::vector<int32_t>{0, 0, 3, -1, 0, 2}, {3, 2}, DType::i32), 4, counts);
  REQUIRE(counts.to_vector<int64_t>() == std::vector<int64_t>{8, 0, 1, 2});
  REQUIRE_THROWS_WITH(ops::count_experts(Tensor::from_vector(std::vector<int32_t>{0, 4}, {2}, DType::i32), 4, counts),
                      Contains("count_experts: expert id 4 of slot 1 is outside [-1, 4)"));

  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    const std::vector<double> start = {0.25, -0.5, 0.125, 1.0};
    const std::vector<int64_t> loads = {8, 0, 3, 3};  // mean 3.5: signs [+1, -1, -1, -1]
    std::vector<double> expected = start;
    update_expert_bias(expected, loads, 0.0625);  // the host reference
    Tensor bias = on_cpu(start, {4}, dtype);
    Tensor load_tensor = Tensor::from_vector(loads, {4}, DType::i64);
    ops::update_expert_bias(bias, load_tensor, 0.0625, Tensor::from_vector(std::vector<float>{0.5f}, {1}, DType::f32));
    REQUIRE(bias.to_vector<double>() == expected);
    ops::update_expert_bias(bias, load_tensor, 0.0625,
                            Tensor::from_vector(std::vector<float>{std::nanf("")}, {1}, DType::f32));
    REQUIRE(bias.to_vector<double>() == expected);  // a skipped step moves nothing
  }
}

TEST_CASE("balancing ops reject bad shapes, naming the op and what is wrong", "[balancing][device]") {
  const Tensor scores = test::random_tensor({4, 4}, DType::f32, 1, Device::cpu(), 0.1, 1.0);
  const Tensor ids = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 1, 2, 3, 9}, {4, 2}, DType::i32);
  Tensor value = Tensor::zeros({1}, DType::f64), dscores = Tensor::zeros({4, 4}, DType::f32);
  Tensor dweights = Tensor::zeros({4, 2}, DType::f32), weights = test::random_tensor({4, 2}, DType::f32, 2);
  REQUIRE_THROWS_WITH(ops::importance_balance(weights, ids, 4, 0.1, value, dweights),
                      Contains("importance_balance: expert id 9 of slot 7 is outside [-1, 4)"));
  REQUIRE_THROWS_WITH(ops::seq_balance(scores, ids, 3, 0.1, value, dscores),
                      Contains("seq_balance: seq_len = 3 does not divide tokens = 4"));
  REQUIRE_THROWS_WITH(ops::load_balance(scores, scores, scores, 4, 0.1, value, dscores, dscores),
                      Contains("load_balance: needs 1 <= k < E (the k-th largest of the other E-1 "
                               "experts), got k = 4"));
  Tensor sums = Tensor::zeros({4}, DType::f32), row = Tensor::zeros({4}, DType::f32);
  REQUIRE_THROWS_WITH(ops::device_balance(sums, ids, 3, 0.1, value, row),
                      Contains("device_balance: groups = 3 does not divide experts = 4"));
  REQUIRE_THROWS_WITH(ops::switch_balance_from_counts(sums, Tensor::zeros({4}, DType::i32), 4, 2, 0.1, value, row),
                      Contains("switch_balance"));
  REQUIRE_THROWS_WITH(ops::device_balance_from_counts(sums, Tensor::zeros({3}, DType::i64), 4, 2, 2, 0.1, value, row),
                      Contains("device_balance"));
  REQUIRE_THROWS_WITH(ops::switch_balance_from_counts(sums, Tensor::zeros({4}, DType::i64), 4, 0, 0.1, value, row),
                      Contains("switch_balance: needs tokens >= 0 and slots >= 1, got 4 and 0"));
  Tensor f32_value = Tensor::zeros({1}, DType::f32);
  REQUIRE_THROWS_WITH(ops::z_balance(scores, 0.1, f32_value, dscores), Contains("z_balance: value must be f64[1]"));
  Tensor zero_row = Tensor::zeros({4, 4}, DType::f32);
  REQUIRE_THROWS_WITH(ops::seq_balance(zero_row, Tensor::zeros({4, 2}, DType::i32), 4, 0.1, value, dscores),
                      Contains("balancing: scores of token 0 sum to 0"));
  Tensor bias = Tensor::zeros({4}, DType::f32);
  REQUIRE_THROWS_WITH(ops::update_expert_bias(bias, Tensor::zeros({3}, DType::i64), 0.1),
                      Contains("update_expert_bias loads"));
}

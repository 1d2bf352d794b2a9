// The learned routers: top-k in each mode (selection, weights, f64 gradients), noisy top-k
// (noise in training only, seeded), expert choice (each expert takes its best tokens, gradients).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "routing/expert_choice_router.h"
#include "routing/topk_router.h"
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using test::check_gradient;
using test::check_param_gradients;
using test::f64_tensor;
using test::max_abs;
using test::randomize_param;
using test::sigmoid;
using test::require_grads_doubled;
using test::snapshot_grads;
using test::weighted_sum;
using test::k_init_std;

namespace {

struct TopKMode {
  const char* name;
  int64_t experts, k;
  ops::ScoreFunction score;
  bool renormalize, softmax_after_topk, noisy, bias;
  int64_t num_groups, top_groups;
};

TopKRouterOptions topk_options(const TopKMode& m, int64_t d) {
  TopKRouterOptions o;
  o.d_model = d;
  o.num_experts = m.experts;
  o.topk.k = m.k;
  o.topk.score = m.score;
  o.topk.renormalize = m.renormalize;
  o.topk.softmax_after_topk = m.softmax_after_topk;
  o.topk.num_groups = m.num_groups;
  o.topk.top_groups = m.top_groups;
  o.noisy = m.noisy;
  o.expert_bias = m.bias;
  o.init_std = k_init_std;
  return o;
}


// Host reference of the top-k selection from the logits: ids and weights per token.
struct HostRouting {
  std::vector<int32_t> ids;
  std::vector<double> scores, weights;
};
HostRouting host_topk(const std::vector<double>& logits, const std::vector<double>& bias, const TopKMode& m,
                      bool use_groups) {
  const int64_t E = m.experts, T = static_cast<int64_t>(logits.size()) / E;
  HostRouting r;
  for (int64_t t = 0; t < T; ++t) {
    const double* l = &logits[static_cast<size_t>(t * E)];
    std::vector<double> s(static_cast<size_t>(E)), key(static_cast<size_t>(E));
    double mx = *std::max_element(l, l + E), z = 0;
    for (int64_t i = 0; i < E; ++i) z += std::exp(l[i] - mx);
    for (int64_t i = 0; i < E; ++i) {
      s[i] = m.score == ops::ScoreFunction::sigmoid ? sigmoid(l[i]) : std::exp(l[i] - mx) / z;
      key[i] = s[i] + (bias.empty() ? 0.0 : bias[i]);
    }
    std::vector<bool> allowed(static_cast<size_t>(E), true);
    if (use_groups && m.num_groups > 0) {
      const int64_t size = E / m.num_groups;
      std::vector<std::pair<double, int64_t>> groups;
      for (int64_t g = 0; g < m.num_groups; ++g)
        groups.push_back({-*std::max_element(key.begin() + g * size, key.begin() + (g + 1) * size), g});
      std::sort(groups.begin(), groups.end());
      std::fill(allowed.begin(), allowed.end(), false);
      for (int64_t j = 0; j < m.top_groups; ++j)
        for (int64_t i = groups[j].second * size; i < (groups[j].second + 1) * size; ++i) allowed[i] = true;
    }
    std::vector<int32_t> order;
    for (int32_t i = 0; i < E; ++i)
      if (allowed[i]) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key[a] > key[b]; });
    order.resize(static_cast<size_t>(m.k));
    double sel = 0, lmax = -INFINITY;
    for (int32_t i : order) {
      sel += s[i];
      lmax = std::max(lmax, l[i]);
    }
    double lz = 0;
    for (int32_t i : order) lz += std::exp(l[i] - lmax);
    for (int32_t i : order) {
      r.ids.push_back(i);
      if (m.softmax_after_topk) {
        r.weights.push_back(std::exp(l[i] - lmax) / lz);
      } else if (m.renormalize || m.score == ops::ScoreFunction::sigmoid) {
        r.weights.push_back(s[i] / sel);
      } else {
        r.weights.push_back(s[i]);
      }
    }
    r.scores.insert(r.scores.end(), s.begin(), s.end());
  }
  return r;
}

}  // namespace

TEST_CASE("top-k router: selection and weights in each mode, gradients match finite differences",
          "[routing][gradcheck][module]") {
  using SF = ops::ScoreFunction;
  auto m = GENERATE(TopKMode{"softmax_topk k=1", 4, 1, SF::softmax, false, false, false, false, 0, 0},
                    TopKMode{"softmax_topk", 4, 2, SF::softmax, false, false, false, false, 0, 0},
                    TopKMode{"softmax_topk renorm", 4, 2, SF::softmax, true, false, false, false, 0, 0},
                    TopKMode{"softmax_topk renorm k=3", 5, 3, SF::softmax, true, false, false, false, 0, 0},
                    TopKMode{"topk_softmax", 4, 2, SF::softmax, false, true, false, false, 0, 0},
                    TopKMode{"sigmoid", 4, 2, SF::sigmoid, true, false, false, false, 0, 0},
                    TopKMode{"sigmoid + bias", 4, 2, SF::sigmoid, true, false, false, true, 0, 0},
                    TopKMode{"noisy_topk", 4, 2, SF::softmax, false, true, true, false, 0, 0},
                    TopKMode{"group-limited softmax", 8, 2, SF::softmax, true, false, false, false, 4, 1},
                    TopKMode{"group-limited sigmoid + bias", 8, 3, SF::sigmoid, true, false, false, true, 4, 2});
  INFO("mode " << m.name);
  const int64_t tokens = 10, d = 6, E = m.experts, k = m.k;
  ParamStore store;
  TopKRouter router(store, "router", topk_options(m, d));
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(61);
  REQUIRE(router.slots_per_token() == k);
  REQUIRE(router.num_experts() == E);
  if (m.noisy) {
    REQUIRE(router.name() == "noisy_topk");
    randomize_param(store, store.find("router.noise_weight"), 60, -0.5, 0.5);  // zero-initialised
  }
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 62, Device::cpu(), -2.0, 2.0);
  const RouteInputs inputs{nullptr, nullptr, 0, true, 777};

  std::vector<double> bias;
  if (m.bias) {
    // The bias starts at zero; set it by hand, large against the sigmoid scores, and require
    // that it changes the selection.
    REQUIRE(router.expert_bias_id() >= 0);
    RouterSaved unbiased_saved;
    auto unbiased_ids = router.route(x, inputs, unbiased_saved).ids.to_vector<int32_t>();
    for (int64_t i = 0; i < E; ++i) bias.push_back((i % 2 == 0 ? 0.3 : -0.3) + 0.02 * static_cast<double>(i));
    store.load_master_from_host(router.expert_bias_id(), f64_tensor(bias, {E}));
    RouterSaved biased_saved;
    REQUIRE(router.route(x, inputs, biased_saved).ids.to_vector<int32_t>() != unbiased_ids);
  } else {
    REQUIRE(router.expert_bias_id() < 0);
  }

  store.zero_grads();
  RouterSaved saved;
  Routing routing = router.route(x, inputs, saved);
  REQUIRE(routing.ids.shape() == Shape{tokens, k});
  REQUIRE(routing.scores.shape() == Shape{tokens, E});
  REQUIRE(saved.clean.defined() == m.noisy);

  // Selection and weights against a host reference computed from the (noisy) logits.
  const auto logits_v = routing.logits.to_vector<double>();
  HostRouting ref = host_topk(logits_v, bias, m, true);
  REQUIRE(routing.ids.to_vector<int32_t>() == ref.ids);
  test::require_close(routing.scores.to_vector<double>(), ref.scores, 1e-14, 1e-12, "scores");
  test::require_close(routing.weights.to_vector<double>(), ref.weights, 1e-14, 1e-12, "weights");
  if (m.num_groups > 0) {  // the group limit must bind for some token
    REQUIRE(host_topk(logits_v, bias, m, false).ids != ref.ids);
  }
  if (m.noisy) {  // h = clean + normal * softplus(raw_noise), noise drawn from the seed
    auto c = saved.clean.to_vector<double>(), rn = saved.raw_noise.to_vector<double>(), n = saved.normal.to_vector<double>();
    std::vector<double> h(c.size());
    for (size_t i = 0; i < c.size(); ++i) h[i] = c[i] + n[i] * std::log1p(std::exp(rn[i]));
    test::require_close(logits_v, h, 1e-14, 1e-12, "noisy logits");
    REQUIRE(max_abs(n) > 0.1);
  }

  // Objective: a random linear functional of every router output the MoE layer reads.
  auto gw = test::random_values(tokens * k, 63), gs = test::random_values(tokens * E, 64),
       gl = test::random_values(tokens * E, 65), gc = test::random_values(tokens * E, 66),
       gr = test::random_values(tokens * E, 67);
  const auto ref_ids = routing.ids.to_vector<int32_t>();
  bool routing_changed = false;
  auto objective = [&]() {
    RouterSaved s;
    Routing r = router.route(x, inputs, s);
    if (r.ids.to_vector<int32_t>() != ref_ids) routing_changed = true;
    double f = weighted_sum(r.weights, gw) + weighted_sum(r.scores, gs) + weighted_sum(r.logits, gl);
    if (m.noisy) f += weighted_sum(s.clean, gc) + weighted_sum(s.raw_noise, gr);
    return f;
  };
  RouterGrads grads;
  grads.dweights = f64_tensor(gw, {tokens, k});
  grads.dscores = f64_tensor(gs, {tokens, E});
  grads.dlogits = f64_tensor(gl, {tokens, E});
  if (m.noisy) {
    grads.dclean = f64_tensor(gc, {tokens, E});
    grads.draw_noise = f64_tensor(gr, {tokens, E});
  }

  // backward adds into dx: start from a nonzero base and check the increment.
  auto base = test::random_values(tokens * d, 68);
  Tensor dx = f64_tensor(base, {tokens, d});
  router.backward(saved, grads, dx);
  auto dx_v = dx.to_vector<double>();
  for (size_t i = 0; i < dx_v.size(); ++i) dx_v[i] -= base[i];
  check_gradient(dx_v, x, objective, "dx");
  check_param_gradients(store, objective);
  REQUIRE(!routing_changed);

  auto first = snapshot_grads(store);
  Tensor dx2 = Tensor::zeros({tokens, d}, DType::f64);
  router.backward(saved, grads, dx2);
  require_grads_doubled(store, first);
}

TEST_CASE("noisy top-k router: noise only in training, reproducible from the seed", "[routing][module]") {
  const int64_t tokens = 6, d = 5, E = 4;
  ParamStore store;
  TopKMode m{"noisy_topk", E, 2, ops::ScoreFunction::softmax, false, true, true, false, 0, 0};
  TopKRouter router(store, "router", topk_options(m, d));
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(69);
  randomize_param(store, store.find("router.noise_weight"), 70, -0.5, 0.5);
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 71);
  auto route = [&](bool training, uint64_t seed, RouterSaved& s) {
    return router.route(x, RouteInputs{nullptr, nullptr, 0, training, seed}, s).logits.to_vector<double>();
  };
  RouterSaved eval_saved, a, b, c;
  auto eval_logits = route(false, 5, eval_saved);
  REQUIRE(!eval_saved.clean.defined());
  Tensor clean = Tensor::zeros({tokens, E}, DType::f64);
  ops::matmul(x, false, store.param(store.find("router.weight")), false, clean);
  test::require_close(eval_logits, clean.to_vector<double>(), 1e-14, 1e-12, "evaluation logits = x W");
  REQUIRE(route(true, 5, a) == route(true, 5, b));
  REQUIRE(route(true, 5, a) != route(true, 6, c));
  REQUIRE(route(true, 5, a) != eval_logits);
}

TEST_CASE("expert-choice router: each expert takes its best tokens; gradients match finite differences",
          "[routing][gradcheck][module]") {
  auto capacity_factor = GENERATE(1.0, 1.5);
  INFO("capacity factor " << capacity_factor);
  const int64_t tokens = 8, d = 6, E = 4;
  ParamStore store;
  ExpertChoiceRouter router(store, "router", d, E, capacity_factor, k_init_std);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(72);
  REQUIRE(router.slots_per_token() == E);
  REQUIRE(router.name() == "expert_choice");
  const int64_t capacity = static_cast<int64_t>(std::ceil(capacity_factor * tokens / E));
  REQUIRE(router.capacity(tokens) == capacity);
  REQUIRE(router.capacity(1) == 1);
  ParamStore scratch;  // a capacity factor beyond E: every expert takes every token, no more
  REQUIRE(ExpertChoiceRouter(scratch, "wide", d, E, 10.0, k_init_std).capacity(tokens) == tokens);
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 73, Device::cpu(), -2.0, 2.0);

  store.zero_grads();
  RouterSaved saved;
  Routing routing = router.route(x, RouteInputs{}, saved);
  REQUIRE(routing.ids.shape() == Shape{tokens, E});
  // Host reference: softmax per token, then per expert the `capacity` best tokens.
  TopKMode softmax_mode{"softmax", E, 1, ops::ScoreFunction::softmax, false, false, false, false, 0, 0};
  auto scores = host_topk(routing.logits.to_vector<double>(), {}, softmax_mode, false).scores;
  test::require_close(routing.scores.to_vector<double>(), scores, 1e-14, 1e-12, "scores");
  std::vector<int32_t> expected_ids(static_cast<size_t>(tokens * E), -1);
  std::vector<double> expected_w(static_cast<size_t>(tokens * E), 0.0);
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t> order(static_cast<size_t>(tokens));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return scores[static_cast<size_t>(a * E + e)] > scores[static_cast<size_t>(b * E + e)]; });
    for (int64_t j = 0; j < capacity; ++j) {
      size_t i = static_cast<size_t>(order[static_cast<size_t>(j)] * E + e);
      expected_ids[i] = static_cast<int32_t>(e);
      expected_w[i] = scores[i];
    }
  }
  REQUIRE(routing.ids.to_vector<int32_t>() == expected_ids);
  test::require_close(routing.weights.to_vector<double>(), expected_w, 1e-14, 1e-12, "weights");

  auto gw = test::random_values(tokens * E, 74), gs = test::random_values(tokens * E, 75),
       gl = test::random_values(tokens * E, 76);
  bool routing_changed = false;
  auto objective = [&]() {
    RouterSaved s;
    Routing r = router.route(x, RouteInputs{}, s);
    if (r.ids.to_vector<int32_t>() != expected_ids) routing_changed = true;
    return weighted_sum(r.weights, gw) + weighted_sum(r.scores, gs) + weighted_sum(r.logits, gl);
  };
  RouterGrads grads;
  grads.dweights = f64_tensor(gw, {tokens, E});
  grads.dscores = f64_tensor(gs, {tokens, E});
  grads.dlogits = f64_tensor(gl, {tokens, E});
  auto base = test::random_values(tokens * d, 77);
  Tensor dx = f64_tensor(base, {tokens, d});
  router.backward(saved, grads, dx);
  auto dx_v = dx.to_vector<double>();
  for (size_t i = 0; i < dx_v.size(); ++i) dx_v[i] -= base[i];
  check_gradient(dx_v, x, objective, "dx");
  check_param_gradients(store, objective);
  REQUIRE(!routing_changed);

  auto first = snapshot_grads(store);
  Tensor dx2 = Tensor::zeros({tokens, d}, DType::f64);
  router.backward(saved, grads, dx2);
  require_grads_doubled(store, first);
}

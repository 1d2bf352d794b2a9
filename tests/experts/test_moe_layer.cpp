// The MoE layer as a whole (router -> capacity -> dispatch -> experts -> combine, shared
// experts, balancing losses): f64 finite-difference checks of the input and every parameter
// gradient for each router, balancing term, capacity drop order and shared-expert option, plus
// behaviour against host references (capacity dropping, hash routing, the layer statistics).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "experts/moe_layer.h"
#include "routing/hash_router.h"
#include "routing/router_registry.h"
#include "tests/experts/moe_layer_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using namespace moe::layer_test;

namespace {

using test::check_gradient;
using test::check_param_gradients;
using test::f64_tensor;
using test::max_abs;
using test::weighted_sum;

constexpr double k_atol = 1e-7, k_rtol = 1e-5;


// Per-row argsort of a [T,E] tensor: the full expert ranking (the load estimator's thresholds
// depend on more than the top k).
std::vector<int32_t> row_orders(const Tensor& t) {
  auto v = t.to_vector<double>();
  const int64_t E = t.size(1);
  std::vector<int32_t> out;
  for (int64_t r = 0; r < t.size(0); ++r) {
    std::vector<int32_t> o(static_cast<size_t>(E));
    std::iota(o.begin(), o.end(), 0);
    std::stable_sort(o.begin(), o.end(), [&](int32_t a, int32_t b) { return v[static_cast<size_t>(r * E + a)] > v[static_cast<size_t>(r * E + b)]; });
    out.insert(out.end(), o.begin(), o.end());
  }
  return out;
}

// Host reference of relu expert e on one row: relu(x W_up[e]) W_down[e].
std::vector<double> host_relu_expert(const ParamStore& store, int64_t e, const double* x) {
  auto up = store.param(store.find("moe.experts.w_up")).to_vector<double>();
  auto down = store.param(store.find("moe.experts.w_down")).to_vector<double>();
  const int64_t f = k_d_expert;
  std::vector<double> h(static_cast<size_t>(f), 0.0), y(static_cast<size_t>(k_d), 0.0);
  for (int64_t j = 0; j < f; ++j) {
    for (int64_t c = 0; c < k_d; ++c) h[j] += x[c] * up[static_cast<size_t>((e * k_d + c) * f + j)];
    h[j] = std::max(h[j], 0.0);
  }
  for (int64_t c = 0; c < k_d; ++c)
    for (int64_t j = 0; j < f; ++j) y[c] += h[j] * down[static_cast<size_t>((e * f + j) * k_d + c)];
  return y;
}

// y[t] = sum over slots with id >= 0 of weight * expert(x[t]) (relu experts, no shared).
std::vector<double> host_moe_output(const ParamStore& store, const Tensor& x, const std::vector<int32_t>& ids,
                                    const std::vector<double>& weights, int64_t k) {
  auto xv = x.to_vector<double>();
  const int64_t T = x.size(0);
  std::vector<double> y(static_cast<size_t>(T * k_d), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < k; ++s) {
      int32_t e = ids[static_cast<size_t>(t * k + s)];
      if (e < 0) continue;
      auto ye = host_relu_expert(store, e, &xv[static_cast<size_t>(t * k_d)]);
      for (int64_t c = 0; c < k_d; ++c) y[static_cast<size_t>(t * k_d + c)] += weights[static_cast<size_t>(t * k + s)] * ye[c];
    }
  return y;
}

}  // namespace

TEST_CASE("MoE layer gradients match finite differences", "[experts][gradcheck][moe]") {
  using A = ops::Activation;
  using D = ops::DropOrder;
  auto s = GENERATE(
      LayerSpec{.name = "softmax_topk renorm, switch, shared", .num_shared = 1, .d_shared = 4,
                .balancing = {.switch_coef = 0.1}},
      LayerSpec{.name = "softmax_topk, importance", .renormalize = false, .act = A::gelu,
                .balancing = {.importance_coef = 0.2}},
      LayerSpec{.name = "topk_softmax, z, gated shared", .router = "topk_softmax", .act = A::geglu, .num_shared = 2,
                .d_shared = 3, .shared_gate = true, .balancing = {.z_coef = 0.05}},
      LayerSpec{.name = "sigmoid + bias, seq", .router = "sigmoid", .act = A::relu, .balancing = {.seq_coef = 0.1},
                .bias = true},
      LayerSpec{.name = "softmax_topk renorm k=1, device", .top_k = 1,
                .balancing = {.device_coef = 0.1, .device_groups = 2}},
      LayerSpec{.name = "noisy_topk, load", .router = "noisy_topk", .balancing = {.load_coef = 0.3}},
      LayerSpec{.name = "noisy_topk k=1, importance + load", .router = "noisy_topk", .top_k = 1, .act = A::gelu,
                .balancing = {.importance_coef = 0.1, .load_coef = 0.2}},
      LayerSpec{.name = "group-limited sigmoid + bias, every term but load, gated shared, capacity by probability",
                .router = "sigmoid", .num_groups = 2, .top_groups = 1, .capacity_factor = 1.0, .num_shared = 1,
                .d_shared = 3, .shared_gate = true,
                .balancing = {.switch_coef = 0.1, .importance_coef = 0.1, .z_coef = 0.02, .seq_coef = 0.1,
                              .device_coef = 0.1, .device_groups = 2},
                .bias = true},
      LayerSpec{.name = "capacity by position, switch", .capacity_factor = 1.0, .drop_order = D::by_position,
                .balancing = {.switch_coef = 0.1}},
      // (At capacity_factor 0.75 every expert is full: kept counts are all equal and the kept-slot
      // Switch loss is a constant, the blindness moe.aux_count = "routed" removes.)
      LayerSpec{.name = "capacity by probability, switch on kept slots", .capacity_factor = 1.0,
                .balancing = {.switch_coef = 0.1, .aux_count = AuxCount::kept}},
      LayerSpec{.name = "capacity by probability, importance", .router = "topk_softmax", .act = A::relu,
                .capacity_factor = 0.75, .balancing = {.importance_coef = 0.2}},
      LayerSpec{.name = "expert choice, z + switch", .router = "expert_choice", .capacity_factor = 1.5,
                .balancing = {.switch_coef = 0.1, .z_coef = 0.05}},
      LayerSpec{.name = "hash random (balancing configured, nothing to balance)", .router = "hash", .top_k = 1,
                .act = A::relu, .balancing = {.switch_coef = 0.1}},
      LayerSpec{.name = "softmax_topk, no balancing, ungated shared", .act = A::relu, .num_shared = 2, .d_shared = 2,
                .balancing = {}});
  INFO("variant: " << s.name);
  auto layer = build_layer(s, 91);
  ParamStore& store = layer->store;
  const MoeLayer& moe = *layer->moe;
  const bool hash = s.router == "hash", noisy = s.router == "noisy_topk";
  const float aux_scale = 0.5f;
  const auto tokens = batch_tokens(92);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 4242};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 93, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(k_tokens * k_d, 94);

  store.zero_grads();
  MoeLayerSaved saved;
  Tensor y = moe.forward(x, inputs, saved);
  const MoeLayerStats& st = saved.stats;
  // Every enabled term is reported (none for a hash router: it has no scores), and they sum to
  // aux_loss.
  REQUIRE(keys(st.balance) == (hash ? std::vector<std::string>{} : enabled_terms(s.balancing)));
  double total = 0;
  for (const auto& [name, value] : st.balance) {
    INFO("term " << name);
    REQUIRE(value > 0);
    total += value;
  }
  REQUIRE(std::abs(st.aux_loss - total) < 1e-15);
  if (s.capacity_factor > 0 && s.router != "expert_choice") REQUIRE(st.dropped > 0);  // dropping is exercised

  const auto ref_ids = saved.router.routing.ids.to_vector<int32_t>();
  const auto ref_kept = saved.ids.to_vector<int32_t>();
  const auto ref_order = noisy ? row_orders(saved.router.routing.logits) : std::vector<int32_t>{};
  bool routing_changed = false;
  auto objective = [&]() {
    MoeLayerSaved sv;
    Tensor out = moe.forward(x, inputs, sv);
    if (sv.router.routing.ids.to_vector<int32_t>() != ref_ids || sv.ids.to_vector<int32_t>() != ref_kept ||
        (noisy && row_orders(sv.router.routing.logits) != ref_order))
      routing_changed = true;
    return weighted_sum(out, w) + aux_scale * sv.stats.aux_loss;
  };

  Tensor dy = f64_tensor(w, {k_tokens, k_d});
  Tensor dx = moe.backward(saved, dy, aux_scale);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);
  REQUIRE(!routing_changed);
  if (hash) {  // no router parameters at all: only the experts learn
    for (const auto& p : store.infos()) REQUIRE(p.name.rfind("moe.experts.", 0) == 0);
  }

  std::vector<std::vector<double>> first;
  for (size_t i = 0; i < store.infos().size(); ++i) first.push_back(store.grad(static_cast<ParamId>(i)).to_vector<double>());
  moe.backward(saved, dy, aux_scale);
  for (size_t i = 0; i < store.infos().size(); ++i) {
    for (auto& g : first[i]) g *= 2;
    test::require_close(store.grad(static_cast<ParamId>(i)).to_vector<double>(), first[i], 1e-12, 1e-12,
                        store.info(static_cast<ParamId>(i)).name + " accumulates");
  }

  // The balancing losses alone (dy = 0, aux_scale = 1), so that their gradients cannot hide
  // behind the output's: they reach dx and the router's parameters, never the experts.
  if (st.balance.empty()) return;
  auto aux_objective = [&]() {
    MoeLayerSaved sv;
    moe.forward(x, inputs, sv);
    if (sv.router.routing.ids.to_vector<int32_t>() != ref_ids || sv.ids.to_vector<int32_t>() != ref_kept ||
        (noisy && row_orders(sv.router.routing.logits) != ref_order))
      routing_changed = true;
    return sv.stats.aux_loss;
  };
  store.zero_grads();
  Tensor dx_aux = moe.backward(saved, Tensor::zeros({k_tokens, k_d}, DType::f64), 1.0f);
  check_gradient(dx_aux.to_vector<double>(), x, aux_objective, "dx (balancing only)", 1e-5);
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const ParamInfo& p = store.info(id);
    if (p.name.rfind("moe.router.", 0) == 0 && p.kind != ParamKind::buffer) {
      Tensor param = store.param(id);
      check_gradient(store.grad(id).to_vector<double>(), param, aux_objective, p.name + " (balancing only)", 1e-5);
    } else {
      INFO(p.name << " (balancing only)");
      REQUIRE(max_abs(store.grad(id).to_vector<double>()) == 0.0);
    }
  }
  REQUIRE(!routing_changed);
}

TEST_CASE("the residual given to the forward is added to its output, shared experts or not", "[experts][moe]") {
  for (int64_t shared : {0, 2}) {
    INFO("shared experts " << shared);
    auto layer = build_layer(LayerSpec{.name = "residual", .num_shared = shared, .d_shared = shared ? 3 : 0,
                                       .shared_gate = shared > 0, .balancing = {.switch_coef = 0.1}},
                             95);
    const auto tokens = batch_tokens(96);
    const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 4242};
    Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 97, Device::cpu(), -2.0, 2.0);
    Tensor residual = test::random_tensor({k_tokens, k_d}, DType::f64, 98, Device::cpu(), -3.0, 3.0);
    MoeLayerSaved plain, with;
    std::vector<double> expected = layer->moe->forward(x, inputs, plain).to_vector<double>();
    const std::vector<double> r = residual.to_vector<double>();
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += r[i];
    const Tensor y = layer->moe->forward(x, inputs, with, false, {}, residual);
    test::require_close(y.to_vector<double>(), expected, 1e-13, 1e-13, "y with the residual");
    REQUIRE(with.dispatch.combine_addends.empty());  // nothing kept for the backward
    REQUIRE(residual.to_vector<double>() == r);       // the residual itself is left alone
  }
}

// The overlap's phase order (shared experts made apart while the rows would travel, their input
// gradient added by the dispatch's backward) computes what the plain order does, the residual too.
TEST_CASE("the shared experts made apart give the plain order's output and gradients", "[experts][moe]") {
  const auto tokens = batch_tokens(99);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 4242};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 100, Device::cpu(), -2.0, 2.0);
  Tensor residual = test::random_tensor({k_tokens, k_d}, DType::f64, 101, Device::cpu(), -3.0, 3.0);
  Tensor dy = test::random_tensor({k_tokens, k_d}, DType::f64, 102);
  struct Run {
    std::vector<double> y, dx;
    std::vector<std::vector<double>> grads;
    int others = 0;
  };
  auto run = [&](bool overlap) {
    auto layer = build_layer(LayerSpec{.name = "shared apart", .num_shared = 2, .d_shared = 3, .shared_gate = true,
                                       .balancing = {.switch_coef = 0.1}, .a2a_overlap = overlap},
                             103);
    Run r;
    layer->store.zero_grads();
    MoeLayerSaved saved;
    r.y = layer->moe->forward(x, inputs, saved, false, [&] { ++r.others; }, residual).to_vector<double>();
    r.dx = layer->moe->backward(saved, dy, 0.5f, [&] { ++r.others; }).to_vector<double>();
    for (size_t i = 0; i < layer->store.infos().size(); ++i)
      r.grads.push_back(layer->store.grad(static_cast<ParamId>(i)).to_vector<double>());
    return r;
  };
  const Run plain = run(false), apart = run(true);
  REQUIRE(plain.others == 2);
  REQUIRE(apart.others == 2);
  test::require_close(apart.y, plain.y, 1e-13, 1e-13, "y");
  test::require_close(apart.dx, plain.dx, 1e-13, 1e-13, "dx");
  for (size_t i = 0; i < plain.grads.size(); ++i)
    test::require_close(apart.grads[i], plain.grads[i], 1e-13, 1e-13, "gradient " + std::to_string(i));
}

TEST_CASE("capacity dropping keeps each expert's best slots; dropped slots pass nothing through",
          "[experts][moe][capacity]") {
  auto order = GENERATE(ops::DropOrder::by_probability, ops::DropOrder::by_position);
  auto router = GENERATE(std::string("softmax_topk"), std::string("topk_softmax"));
  const bool by_probability = order == ops::DropOrder::by_probability;
  INFO("drop order " << (by_probability ? "probability" : "position") << " router " << router);
  const int64_t k = 2;
  LayerSpec spec{.router = router, .act = ops::Activation::relu, .capacity_factor = 0.5, .drop_order = order,
                 .balancing = {}};
  auto layer = build_layer(spec, 101);
  const auto tokens = batch_tokens(102);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 0};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 103, Device::cpu(), -2.0, 2.0);
  MoeLayerSaved saved;
  Tensor y = layer->moe->forward(x, inputs, saved);

  const int64_t capacity = static_cast<int64_t>(std::ceil(0.5 * k * k_tokens / k_experts));  // 3 of 24 slots each
  const auto ids = saved.router.routing.ids.to_vector<int32_t>();
  const auto weights = saved.router.routing.weights.to_vector<double>();
  // Host reference: per expert, its slots in priority order, the first `capacity` kept.
  std::vector<int32_t> kept(ids);
  std::vector<double> kept_w(weights);
  std::vector<int64_t> per_expert(static_cast<size_t>(k_experts), 0);
  int64_t dropped = 0;
  for (int32_t e = 0; e < k_experts; ++e) {
    std::vector<int64_t> slots;
    for (int64_t s = 0; s < k; ++s)  // slot-major, then token: the by-position priority
      for (int64_t t = 0; t < k_tokens; ++t)
        if (ids[static_cast<size_t>(t * k + s)] == e) slots.push_back(t * k + s);
    if (by_probability) {
      std::stable_sort(slots.begin(), slots.end(), [&](int64_t a, int64_t b) {
        return weights[static_cast<size_t>(a)] > weights[static_cast<size_t>(b)] ||
               (weights[static_cast<size_t>(a)] == weights[static_cast<size_t>(b)] && a < b);
      });
    }
    for (size_t j = 0; j < slots.size(); ++j) {
      if (static_cast<int64_t>(j) < capacity) {
        ++per_expert[static_cast<size_t>(e)];
      } else {
        kept[static_cast<size_t>(slots[j])] = -1;
        kept_w[static_cast<size_t>(slots[j])] = 0.0;
        ++dropped;
      }
    }
  }
  REQUIRE(dropped > 0);
  REQUIRE(saved.ids.to_vector<int32_t>() == kept);
  REQUIRE(saved.weights.to_vector<double>() == kept_w);
  REQUIRE(saved.stats.dropped == dropped);
  REQUIRE(saved.stats.slots == k_tokens * k);
  REQUIRE(saved.stats.tokens_per_expert == per_expert);
  REQUIRE(std::accumulate(per_expert.begin(), per_expert.end(), int64_t{0}) == k_tokens * k - dropped);
  // The router's own outputs are left alone (backward reads them).
  REQUIRE(std::count(ids.begin(), ids.end(), -1) == 0);
  // Output: only the kept slots contribute.
  test::require_close(y.to_vector<double>(), host_moe_output(layer->store, x, kept, kept_w, k), 1e-12, 1e-12,
                      "output from kept slots");
}

TEST_CASE("hash router (random table): each token goes to its table's expert with weight 1, no router gradient",
          "[experts][moe][hash]") {
  LayerSpec spec{.router = "hash", .top_k = 1, .act = ops::Activation::relu, .balancing = {.switch_coef = 0.1}};
  auto layer = build_layer(spec, 111);
  const auto* router = dynamic_cast<const HashRouter*>(&layer->moe->router());
  REQUIRE(router != nullptr);
  REQUIRE(router->name() == "hash-random");
  REQUIRE(router->slots_per_token() == 1);
  REQUIRE(router->table() != nullptr);
  REQUIRE(router->table()->table == build_random_hash_table(k_vocab, k_experts, 3).table);
  const auto tokens = batch_tokens(112);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 0};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 113, Device::cpu(), -2.0, 2.0);
  MoeLayerSaved saved;
  Tensor y = layer->moe->forward(x, inputs, saved, true);
  std::vector<int32_t> expected;
  std::vector<int64_t> per_expert(static_cast<size_t>(k_experts), 0);
  for (int32_t t : tokens) {
    expected.push_back(router->table()->table[static_cast<size_t>(t)]);
    ++per_expert[static_cast<size_t>(expected.back())];
  }
  REQUIRE(saved.ids.to_vector<int32_t>() == expected);
  REQUIRE(saved.weights.to_vector<double>() == std::vector<double>(static_cast<size_t>(k_tokens), 1.0));
  REQUIRE(!saved.router.routing.scores.defined());
  REQUIRE(saved.stats.tokens_per_expert == per_expert);
  REQUIRE(saved.stats.balance.empty());
  REQUIRE(saved.stats.aux_loss == 0.0);
  test::require_close(y.to_vector<double>(),
                      host_moe_output(layer->store, x, expected, std::vector<double>(expected.size(), 1.0), 1), 1e-12,
                      1e-12, "y = expert of the table");
  // The router adds nothing to dx: dx is the experts' path alone (checked against finite
  // differences in the gradient test); here, the router's backward leaves dx unchanged.
  Tensor dx = Tensor::zeros({k_tokens, k_d}, DType::f64);
  RouterGrads g;
  g.dweights = f64_tensor(test::random_values(k_tokens, 114), {k_tokens, 1});
  layer->moe->router().backward(saved.router, g, dx);
  REQUIRE(max_abs(dx.to_vector<double>()) == 0.0);
}

TEST_CASE("MoE layer statistics: slots, drops, tokens per expert, balance terms, entropy", "[experts][moe][stats]") {
  const auto tokens = batch_tokens(121);
  const RouteInputs inputs{&tokens, nullptr, k_seq_len, true, 0};
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 122, Device::cpu(), -2.0, 2.0);

  SECTION("dropless top-k: every slot routed, entropy only when collected") {
    LayerSpec spec{.balancing = {.switch_coef = 0.1, .z_coef = 0.01, .seq_coef = 0.1}};
    auto layer = build_layer(spec, 123);
    MoeLayerSaved saved;
    layer->moe->forward(x, inputs, saved);
    REQUIRE(saved.stats.slots == 2 * k_tokens);
    REQUIRE(saved.stats.dropped == 0);
    REQUIRE(saved.stats.tokens_per_expert == count_ids(saved.ids.to_vector<int32_t>()));
    REQUIRE(keys(saved.stats.balance) == std::vector<std::string>{"seq", "switch", "z"});
    REQUIRE(saved.stats.entropy == 0.0);
    // Switch by hand: 0.1 * E * sum_i f_i P_i, f_i = counts_i / (k T), P_i = mean score.
    auto scores = saved.router.routing.scores.to_vector<double>();
    double sw = 0;
    for (int64_t e = 0; e < k_experts; ++e) {
      double p = 0;
      for (int64_t t = 0; t < k_tokens; ++t) p += scores[static_cast<size_t>(t * k_experts + e)] / k_tokens;
      sw += 0.1 * k_experts * static_cast<double>(saved.stats.tokens_per_expert[static_cast<size_t>(e)]) /
            (2.0 * k_tokens) * p;
    }
    REQUIRE(std::abs(saved.stats.balance.at("switch") - sw) < 1e-14);

    MoeLayerSaved with_stats;
    layer->moe->forward(x, inputs, with_stats, true);
    double entropy = 0;
    for (int64_t t = 0; t < k_tokens; ++t)
      for (int64_t e = 0; e < k_experts; ++e) {
        double p = scores[static_cast<size_t>(t * k_experts + e)];
        entropy -= p * std::log(p) / k_tokens;
      }
    REQUIRE(std::abs(with_stats.stats.entropy - entropy) < 1e-12);
    REQUIRE(with_stats.stats.entropy > 0);
    REQUIRE(with_stats.stats.entropy <= std::log(static_cast<double>(k_experts)));
  }
  SECTION("Switch from on-device sums: the host f64 Switch term's value and gradient") {
    LayerSpec spec{.balancing = {.switch_coef = 0.1}};
    auto layer = build_layer(spec, 123);
    MoeLayerSaved saved, with_stats;
    layer->moe->forward(x, inputs, saved);            // column sums on the device, E numbers to the host
    layer->moe->forward(x, inputs, with_stats, true);  // collecting statistics does not change the term
    REQUIRE(keys(saved.stats.balance) == std::vector<std::string>{"switch"});
    REQUIRE(saved.stats.aux_loss == with_stats.stats.aux_loss);
    BalanceInputs in;
    in.tokens = k_tokens;
    in.experts = k_experts;
    in.slots = saved.ids.size(1);
    in.seq_len = inputs.seq_len;
    in.scores = saved.router.routing.scores.to_vector<double>();
    in.counts = saved.dispatch.host_routed_counts();
    BalanceResult host = compute_balancing(in, spec.balancing);
    REQUIRE(std::abs(saved.stats.aux_loss - host.terms.at("switch")) < 1e-14);
    // The Switch gradient is the same row for every token.
    const std::vector<double> grad_row = saved.score_grad_row.to_vector<double>();
    REQUIRE(grad_row.size() == static_cast<size_t>(k_experts));
    REQUIRE(!saved.balance_grads.dscores.defined());
    for (int64_t t = 0; t < k_tokens; ++t) {
      for (int64_t e = 0; e < k_experts; ++e) {
        REQUIRE(std::abs(host.dscores[static_cast<size_t>(t * k_experts + e)] - grad_row[static_cast<size_t>(e)]) <
                1e-12);
      }
    }
  }
  SECTION("capacity: slots counted before dropping") {
    LayerSpec spec{.capacity_factor = 0.5, .balancing = {.importance_coef = 0.1}};
    auto layer = build_layer(spec, 124);
    MoeLayerSaved saved;
    layer->moe->forward(x, inputs, saved);
    auto kept = saved.ids.to_vector<int32_t>();
    int64_t dropped = std::count(kept.begin(), kept.end(), -1);
    REQUIRE(dropped > 0);
    REQUIRE(saved.stats.slots == 2 * k_tokens);
    REQUIRE(saved.stats.dropped == dropped);
    REQUIRE(saved.stats.tokens_per_expert == count_ids(kept));
    for (int64_t c : saved.stats.tokens_per_expert) REQUIRE(c <= 3);  // ceil(0.5 * 2 * 12 / 4)
    REQUIRE(keys(saved.stats.balance) == std::vector<std::string>{"importance"});
  }
  SECTION("expert choice: capacity per expert, nothing counted as dropped") {
    LayerSpec spec{.router = "expert_choice", .capacity_factor = 1.5, .balancing = {}};
    auto layer = build_layer(spec, 125);
    MoeLayerSaved saved;
    layer->moe->forward(x, inputs, saved);
    const int64_t capacity = 5;  // ceil(1.5 * 12 / 4)
    REQUIRE(saved.ids.shape() == Shape{k_tokens, k_experts});
    REQUIRE(saved.stats.tokens_per_expert == std::vector<int64_t>(static_cast<size_t>(k_experts), capacity));
    REQUIRE(saved.stats.slots == k_experts * capacity);
    REQUIRE(saved.stats.dropped == 0);
    REQUIRE(saved.stats.balance.empty());
    REQUIRE(saved.stats.aux_loss == 0.0);
  }
}

TEST_CASE("noisy top-k with the load loss evaluates without noise", "[experts][moe][noisy]") {
  // Evaluation (Trainer::evaluate, Model::logits) routes with training = false: no noise is
  // drawn, so the smooth load estimator has no inputs. The forward must still work.
  LayerSpec spec{.router = "noisy_topk", .balancing = {.importance_coef = 0.1, .load_coef = 0.3}};
  auto layer = build_layer(spec, 131);
  const auto tokens = batch_tokens(132);
  Tensor x = test::random_tensor({k_tokens, k_d}, DType::f64, 133, Device::cpu(), -2.0, 2.0);
  MoeLayerSaved train_saved, eval_saved;
  layer->moe->forward(x, RouteInputs{&tokens, nullptr, k_seq_len, true, 9}, train_saved);
  REQUIRE(train_saved.stats.balance.count("load") == 1);
  REQUIRE_NOTHROW(layer->moe->forward(x, RouteInputs{&tokens, nullptr, k_seq_len, false, 9}, eval_saved));
  REQUIRE(!eval_saved.router.clean.defined());
}

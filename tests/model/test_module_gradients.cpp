// f64 finite-difference gradient checks of every module on its own (norms, attention, dense FFN,
// expert group, local dispatcher with dropped slots, TopKRouter in each mode, expert-choice
// router, shared experts) plus dispatch and routing-selection invariants. The MoE layer as a
// whole: test_moe_layer.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "experts/expert_group.h"
#include "experts/shared_experts.h"
#include "parallel/local_dispatcher.h"
#include "routing/expert_choice_router.h"
#include "routing/topk_router.h"
#include "src/model/attention.h"
#include "src/model/dense_ffn.h"
#include "src/model/norm.h"
#include "tests/test_util.h"

using namespace moe;

namespace {

using test::check_gradient;
using test::check_param_gradients;
using test::f64_tensor;
using test::max_abs;
using test::weighted_sum;

constexpr double k_atol = 1e-7, k_rtol = 1e-5;
constexpr double k_init_std = 0.5;  // large weights: gradients far from zero, routing far from ties


std::vector<std::vector<double>> snapshot_grads(const ParamStore& store) {
  std::vector<std::vector<double>> out;
  for (size_t i = 0; i < store.infos().size(); ++i) out.push_back(store.grad(static_cast<ParamId>(i)).to_vector<double>());
  return out;
}

// backward accumulates into parameter gradients: a second backward doubles them.
void require_grads_doubled(const ParamStore& store, const std::vector<std::vector<double>>& first) {
  for (size_t i = 0; i < store.infos().size(); ++i) {
    std::vector<double> twice = first[i];
    for (auto& g : twice) g *= 2;
    test::require_close(store.grad(static_cast<ParamId>(i)).to_vector<double>(), twice, 1e-12, 1e-12,
                        store.info(static_cast<ParamId>(i)).name + " accumulates");
  }
}

// Replaces a parameter's initial values (norm weights start at ones, biases at zeros).
void randomize_param(ParamStore& store, ParamId id, uint64_t seed, double lo, double hi) {
  const ParamInfo& p = store.info(id);
  store.load_master_from_host(id, f64_tensor(test::random_values(p.numel(), seed, lo, hi), p.shape));
}

// ids i32[T,k] with k distinct experts per token (what any top-k router produces).
Tensor distinct_ids(int64_t tokens, int64_t k, int64_t experts, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  std::vector<int32_t> perm(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    ids.insert(ids.end(), perm.begin(), perm.begin() + k);
  }
  return Tensor::from_vector(ids, {tokens, k}, DType::i32);
}

}  // namespace

TEST_CASE("norm gradients match finite differences", "[model][gradcheck][module]") {
  auto kind = GENERATE(NormKind::rmsnorm, NormKind::layernorm);
  INFO("norm " << (kind == NormKind::rmsnorm ? "rmsnorm" : "layernorm"));
  const int64_t tokens = 5, width = 7;
  ParamStore store;
  Norm norm(store, "norm", width, kind, 1e-5f);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(3);
  randomize_param(store, store.find("norm.weight"), 4, 0.5, 1.5);
  if (kind == NormKind::layernorm) randomize_param(store, store.find("norm.bias"), 5, -1.0, 1.0);

  Tensor x = test::random_tensor({tokens, width}, DType::f64, 6, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(tokens * width, 7);
  auto objective = [&]() {
    Norm::Saved s;
    return weighted_sum(norm.forward(x, s), w);
  };

  store.zero_grads();
  Norm::Saved saved;
  norm.forward(x, saved);
  Tensor dy = f64_tensor(w, {tokens, width});
  Tensor dx = norm.backward(saved, dy);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);

  auto first = snapshot_grads(store);
  norm.backward(saved, dy);
  require_grads_doubled(store, first);
}

namespace {
struct AttentionVariant {
  int64_t num_heads, num_kv_heads;
  bool rope;
};
}  // namespace

TEST_CASE("attention gradients match finite differences", "[model][gradcheck][module]") {
  auto v = GENERATE(AttentionVariant{4, 4, true}, AttentionVariant{4, 4, false}, AttentionVariant{4, 2, true},
                    AttentionVariant{4, 2, false}, AttentionVariant{4, 1, true});
  INFO("heads " << v.num_heads << " kv heads " << v.num_kv_heads << " rope " << v.rope);
  const int64_t batch = 2, seq = 5, d = 16, tokens = batch * seq;
  AttentionConfig cfg;
  cfg.d_model = d;
  cfg.num_heads = v.num_heads;
  cfg.num_kv_heads = v.num_kv_heads;
  cfg.seq_len = seq;
  cfg.rope = v.rope;
  cfg.init_std = k_init_std;
  cfg.out_init_std = k_init_std;
  ParamStore store;
  Attention attn(store, "attn", cfg);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(11);

  Tensor x = test::random_tensor({tokens, d}, DType::f64, 12);
  auto w = test::random_values(tokens * d, 13);
  auto objective = [&]() {
    Attention::Saved s;
    return weighted_sum(attn.forward(x, batch, s), w);
  };

  store.zero_grads();
  Attention::Saved saved;
  attn.forward(x, batch, saved);
  Tensor dy = f64_tensor(w, {tokens, d});
  Tensor dx = attn.backward(saved, dy, batch);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);

  auto first = snapshot_grads(store);
  attn.backward(saved, dy, batch);
  require_grads_doubled(store, first);
}

TEST_CASE("dense FFN gradients match finite differences", "[model][gradcheck][module]") {
  auto act = GENERATE(ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu);
  INFO("activation " << ops::activation_name(act));
  const int64_t tokens = 7, d = 6, d_ff = 5;
  ParamStore store;
  DenseFfn ffn(store, "ffn", d, d_ff, act, k_init_std, k_init_std);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(21);

  Tensor x = test::random_tensor({tokens, d}, DType::f64, 22, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(tokens * d, 23);
  auto objective = [&]() {
    FfnSaved s;
    return weighted_sum(ffn.forward(x, s), w);
  };

  store.zero_grads();
  FfnSaved saved;
  ffn.forward(x, saved);
  Tensor dy = f64_tensor(w, {tokens, d});
  Tensor dx = ffn.backward(saved, dy);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);

  auto first = snapshot_grads(store);
  ffn.backward(saved, dy);
  require_grads_doubled(store, first);
}

TEST_CASE("expert group gradients match finite differences, with experts that receive no rows",
          "[experts][gradcheck][module]") {
  auto act = GENERATE(ops::Activation::swiglu, ops::Activation::gelu);
  INFO("activation " << ops::activation_name(act));
  const int64_t experts = 5, d = 6, d_expert = 4;
  const std::vector<int64_t> counts = {3, 0, 4, 2, 0};  // experts 1 and 4 (the last) get nothing
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  ParamStore store;
  ExpertGroup group(store, "experts", experts, 0, experts, d, d_expert, act, k_init_std, k_init_std);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(31);

  Tensor x = test::random_tensor({rows, d}, DType::f64, 32, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(rows * d, 33);
  auto objective = [&]() {
    ExpertGroupSaved s;
    return weighted_sum(group.forward(x, counts, s), w);
  };

  store.zero_grads();
  ExpertGroupSaved saved;
  group.forward(x, counts, saved);
  Tensor dy = f64_tensor(w, {rows, d});
  Tensor dx = group.backward(saved, dy);
  check_gradient(dx.to_vector<double>(), x, objective, "dx_sorted");
  check_param_gradients(store, objective);

  // Each expert's slice gets a gradient only from its own rows: zero exactly for idle experts.
  for (const char* name : {"experts.w_up", "experts.w_down"}) {
    Tensor g = store.grad(store.find(name));
    int64_t per_expert = g.numel() / experts;
    auto values = g.to_vector<double>();
    for (int64_t e = 0; e < experts; ++e) {
      double m = max_abs(std::vector<double>(values.begin() + e * per_expert, values.begin() + (e + 1) * per_expert));
      INFO(name << " expert " << e << " rows " << counts[static_cast<size_t>(e)] << " max |grad| " << m);
      if (counts[static_cast<size_t>(e)] == 0) {
        REQUIRE(m == 0.0);
      } else {
        REQUIRE(m > 1e-3);
      }
    }
  }

  auto first = snapshot_grads(store);
  group.backward(saved, dy);
  require_grads_doubled(store, first);
}

namespace {
struct DispatchVariant {
  int64_t top_k;
  bool drop;  // every third slot has id -1 (dropped by capacity), with a nonzero weight
};

// Marks every third slot (from slot 1) as dropped; returns the dropped slot indices.
std::vector<size_t> drop_every_third(Tensor& ids) {
  auto v = ids.to_vector<int32_t>();
  std::vector<size_t> dropped;
  for (size_t i = 1; i < v.size(); i += 3) {
    v[i] = -1;
    dropped.push_back(i);
  }
  ids = Tensor::from_vector(v, ids.shape(), DType::i32);
  return dropped;
}
}  // namespace

TEST_CASE("local dispatcher dispatch and combine gradients match finite differences, with dropped slots",
          "[parallel][gradcheck][module]") {
  auto v = GENERATE(DispatchVariant{1, false}, DispatchVariant{2, false}, DispatchVariant{3, false},
                    DispatchVariant{2, true}, DispatchVariant{3, true});
  INFO("top_k " << v.top_k << " drop " << v.drop);
  const int64_t tokens = 7, d = 5, experts = 4, k = v.top_k;
  LocalDispatcher dispatcher(experts);
  Tensor ids = distinct_ids(tokens, k, experts, 41 + static_cast<uint64_t>(k));
  std::vector<size_t> dropped;
  if (v.drop) dropped = drop_every_third(ids);
  const int64_t rows = tokens * k - static_cast<int64_t>(dropped.size());
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 42);
  // Dropped slots keep a nonzero weight: the combine must ignore them anyway.
  Tensor weights = test::random_tensor({tokens, k}, DType::f64, 43, Device::cpu(), 0.2, 1.0);
  // Stand-in for the experts: a fixed multiplier per sorted row and column, so a wrong
  // permutation in either direction changes the answer.
  auto m = test::random_values(rows * d, 44, 0.5, 2.0);
  auto w = test::random_values(tokens * d, 45);
  auto apply_m = [&](const Tensor& t) {
    auto vals = t.to_vector<double>();
    REQUIRE(vals.size() == m.size());
    for (size_t i = 0; i < vals.size(); ++i) vals[i] *= m[i];
    return f64_tensor(vals, t.shape());
  };
  auto objective = [&]() {
    DispatchSaved s;
    Tensor x_sorted = dispatcher.dispatch(x, ids, s);
    return weighted_sum(dispatcher.combine(s, apply_m(x_sorted), weights), w);
  };

  DispatchSaved saved;
  Tensor x_sorted = dispatcher.dispatch(x, ids, saved);
  REQUIRE(x_sorted.size(0) == rows);
  REQUIRE(std::accumulate(saved.counts.begin(), saved.counts.end(), int64_t{0}) == rows);
  auto slot_pos = saved.slot_pos.to_vector<int32_t>();
  for (size_t s : dropped) REQUIRE(slot_pos[s] == -1);
  Tensor y_sorted = apply_m(x_sorted);
  dispatcher.combine(saved, y_sorted, weights);
  Tensor dy_sorted, dweights;
  dispatcher.combine_backward(saved, y_sorted, weights, f64_tensor(w, {tokens, d}), dy_sorted, dweights);
  auto dw = dweights.to_vector<double>();
  for (size_t s : dropped) REQUIRE(dw[s] == 0.0);
  Tensor dx = dispatcher.dispatch_backward(saved, apply_m(dy_sorted));
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_gradient(dw, weights, objective, "dweights");
}

TEST_CASE("dispatch then combine with unit weights returns k * x; payload rows carry their token",
          "[parallel][module][invariant]") {
  auto k = GENERATE(int64_t{1}, int64_t{2}, int64_t{3});
  INFO("top_k " << k);
  const int64_t tokens = 9, d = 4, experts = 5, rows = tokens * k;
  // Routing from a real router (renormalised weights), whose weights are then replaced by ones.
  ParamStore store;
  TopKRouterOptions o;
  o.d_model = d;
  o.num_experts = experts;
  o.topk.k = k;
  o.topk.renormalize = true;
  o.init_std = k_init_std;
  TopKRouter router(store, "router", o);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(51);
  Tensor h = test::random_tensor({tokens, d}, DType::f64, 52);
  RouterSaved rs;
  Routing routing = router.route(h, RouteInputs{}, rs);
  auto ids = routing.ids.to_vector<int32_t>();
  auto rw = routing.weights.to_vector<double>();
  for (int64_t t = 0; t < tokens; ++t) {
    double s = 0;
    for (int64_t j = 0; j < k; ++j) s += rw[static_cast<size_t>(t * k + j)];
    REQUIRE(std::abs(s - 1.0) < 1e-12);
  }
  Tensor ones = f64_tensor(std::vector<double>(static_cast<size_t>(rows), 1.0), {tokens, k});

  // Tagged payload: x[t, c] = 100 (t + 1) + c, distinct for every token and column.
  std::vector<double> xv(static_cast<size_t>(tokens * d));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < d; ++c) xv[static_cast<size_t>(t * d + c)] = 100.0 * static_cast<double>(t + 1) + c;
  Tensor x = f64_tensor(xv, {tokens, d});

  LocalDispatcher dispatcher(experts);
  DispatchSaved saved;
  Tensor x_sorted = dispatcher.dispatch(x, routing.ids, saved);

  // Expected order, computed independently: by expert, then token, then slot.
  std::vector<int32_t> expected_tokens;
  std::vector<int64_t> expected_counts(static_cast<size_t>(experts), 0);
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t s = 0; s < k; ++s)
        if (ids[static_cast<size_t>(t * k + s)] == e) {
          expected_tokens.push_back(static_cast<int32_t>(t));
          ++expected_counts[static_cast<size_t>(e)];
        }
  REQUIRE(static_cast<int64_t>(expected_tokens.size()) == rows);
  REQUIRE(saved.counts == expected_counts);
  REQUIRE(saved.sorted_tokens.to_vector<int32_t>() == expected_tokens);
  auto xs = x_sorted.to_vector<double>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c)
      REQUIRE(xs[static_cast<size_t>(r * d + c)] == xv[static_cast<size_t>(expected_tokens[static_cast<size_t>(r)] * d + c)]);
  // slot t*k+s points at a row of expert ids[t,s] that carries token t.
  auto slot_pos = saved.slot_pos.to_vector<int32_t>();
  std::vector<int64_t> expert_begin(static_cast<size_t>(experts) + 1, 0);
  for (int64_t e = 0; e < experts; ++e)
    expert_begin[static_cast<size_t>(e) + 1] = expert_begin[static_cast<size_t>(e)] + expected_counts[static_cast<size_t>(e)];
  std::vector<int32_t> sorted_perm(slot_pos);
  std::sort(sorted_perm.begin(), sorted_perm.end());
  for (int64_t r = 0; r < rows; ++r) REQUIRE(sorted_perm[static_cast<size_t>(r)] == r);  // a permutation
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t s = 0; s < k; ++s) {
      int32_t row = slot_pos[static_cast<size_t>(t * k + s)];
      int32_t e = ids[static_cast<size_t>(t * k + s)];
      REQUIRE(expected_tokens[static_cast<size_t>(row)] == t);
      REQUIRE(row >= expert_begin[static_cast<size_t>(e)]);
      REQUIRE(row < expert_begin[static_cast<size_t>(e) + 1]);
    }

  Tensor out = dispatcher.combine(saved, x_sorted, ones);
  std::vector<double> kx(xv);
  for (auto& val : kx) val *= static_cast<double>(k);
  REQUIRE(out.to_vector<double>() == kx);  // integers: exact

  // And its gradient: combine_backward then dispatch_backward returns k * dout; d(weight) of a
  // slot is dout[t] . x[t].
  auto dout_v = test::random_values(tokens * d, 53);
  Tensor dy_sorted, dweights;
  dispatcher.combine_backward(saved, x_sorted, ones, f64_tensor(dout_v, {tokens, d}), dy_sorted, dweights);
  Tensor dx = dispatcher.dispatch_backward(saved, dy_sorted);
  std::vector<double> k_dout(dout_v), expected_dw(static_cast<size_t>(rows));
  for (auto& val : k_dout) val *= static_cast<double>(k);
  for (int64_t t = 0; t < tokens; ++t) {
    double dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += dout_v[static_cast<size_t>(t * d + c)] * xv[static_cast<size_t>(t * d + c)];
    for (int64_t s = 0; s < k; ++s) expected_dw[static_cast<size_t>(t * k + s)] = dot;
  }
  test::require_close(dx.to_vector<double>(), k_dout, 1e-12, 1e-12, "dx = k * dout");
  test::require_close(dweights.to_vector<double>(), expected_dw, 1e-10, 1e-12, "dweights");
}

TEST_CASE("dropped slots (id -1) get no row and pass nothing through the combine", "[parallel][module][invariant]") {
  const int64_t tokens = 6, d = 3, experts = 3, k = 2;
  // Token 2 keeps nothing; token 4 keeps only its second slot; expert 1 ends up empty.
  const std::vector<int32_t> ids_v = {0, 2, 2, 0, -1, -1, 2, 0, -1, 2, 0, 2};
  Tensor ids = Tensor::from_vector(ids_v, {tokens, k}, DType::i32);
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 54);
  Tensor weights = test::random_tensor({tokens, k}, DType::f64, 55, Device::cpu(), 0.5, 1.5);
  LocalDispatcher dispatcher(experts);
  DispatchSaved saved;
  Tensor x_sorted = dispatcher.dispatch(x, ids, saved);
  REQUIRE(saved.counts == std::vector<int64_t>{4, 0, 5});
  REQUIRE(x_sorted.size(0) == 9);
  Tensor out = dispatcher.combine(saved, x_sorted, weights);  // experts = identity
  auto xv = x.to_vector<double>(), wv = weights.to_vector<double>(), ov = out.to_vector<double>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < d; ++c) {
      double expected = 0;
      for (int64_t s = 0; s < k; ++s)
        if (ids_v[static_cast<size_t>(t * k + s)] >= 0) expected += wv[static_cast<size_t>(t * k + s)] * xv[static_cast<size_t>(t * d + c)];
      REQUIRE(std::abs(ov[static_cast<size_t>(t * d + c)] - expected) < 1e-12);
    }
  for (int64_t c = 0; c < d; ++c) REQUIRE(ov[static_cast<size_t>(2 * d + c)] == 0.0);  // all slots dropped
}

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

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

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
    REQUIRE(router.bias_id() >= 0);
    RouterSaved unbiased_saved;
    auto unbiased_ids = router.route(x, inputs, unbiased_saved).ids.to_vector<int32_t>();
    for (int64_t i = 0; i < E; ++i) bias.push_back((i % 2 == 0 ? 0.3 : -0.3) + 0.02 * static_cast<double>(i));
    store.load_master_from_host(router.bias_id(), f64_tensor(bias, {E}));
    RouterSaved biased_saved;
    REQUIRE(router.route(x, inputs, biased_saved).ids.to_vector<int32_t>() != unbiased_ids);
  } else {
    REQUIRE(router.bias_id() < 0);
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

TEST_CASE("shared experts gradients match finite differences, gated and ungated", "[experts][gradcheck][module]") {
  auto gated = GENERATE(false, true);
  auto act = GENERATE(ops::Activation::swiglu, ops::Activation::gelu);
  INFO("gated " << gated << " activation " << ops::activation_name(act));
  const int64_t tokens = 7, d = 6, num_shared = 2, d_expert = 3;
  ParamStore store;
  SharedExperts shared(store, "shared", d, num_shared, d_expert, act, gated, k_init_std, k_init_std);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(81);
  REQUIRE(store.infos().size() == (gated ? 3u : 2u));
  REQUIRE(store.info(store.find("shared.w_down")).shape == Shape{num_shared * d_expert, d});

  Tensor x = test::random_tensor({tokens, d}, DType::f64, 82, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(tokens * d, 83);
  auto objective = [&]() {
    SharedExpertsSaved s;
    return weighted_sum(shared.forward(x, s), w);
  };

  // Ungated, the output is the plain FFN of width K*f; gated, each row is scaled by
  // sigmoid(x . w_gate).
  SharedExpertsSaved saved;
  Tensor y = shared.forward(x, saved);
  FfnSaved plain_saved;
  auto plain = ffn_forward(x, store.param(store.find("shared.w_up")), store.param(store.find("shared.w_down")), act,
                           plain_saved).to_vector<double>();
  if (gated) {
    auto xv = x.to_vector<double>(), gv = store.param(store.find("shared.gate")).to_vector<double>();
    for (int64_t t = 0; t < tokens; ++t) {
      double z = 0;
      for (int64_t c = 0; c < d; ++c) z += xv[static_cast<size_t>(t * d + c)] * gv[static_cast<size_t>(c)];
      for (int64_t c = 0; c < d; ++c) plain[static_cast<size_t>(t * d + c)] *= sigmoid(z);
    }
  }
  test::require_close(y.to_vector<double>(), plain, 1e-13, 1e-12, "shared output");

  store.zero_grads();
  auto base = test::random_values(tokens * d, 84);
  Tensor dx = f64_tensor(base, {tokens, d});
  Tensor dy = f64_tensor(w, {tokens, d});
  shared.backward(saved, dy, dx);  // adds into dx
  auto dx_v = dx.to_vector<double>();
  for (size_t i = 0; i < dx_v.size(); ++i) dx_v[i] -= base[i];
  check_gradient(dx_v, x, objective, "dx");
  check_param_gradients(store, objective);

  auto first = snapshot_grads(store);
  Tensor dx2 = Tensor::zeros({tokens, d}, DType::f64);
  shared.backward(saved, dy, dx2);
  require_grads_doubled(store, first);
}

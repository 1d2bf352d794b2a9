// f64 finite-difference gradient checks of every module on its own (norms, attention, dense FFN,
// expert group, local dispatcher, top-k router, Switch aux loss, MoE layer) plus dispatch invariants.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "experts/expert_group.h"
#include "experts/moe_layer.h"
#include "parallel/local_dispatcher.h"
#include "routing/switch_aux_loss.h"
#include "routing/topk_softmax_router.h"
#include "src/model/attention.h"
#include "src/model/dense_ffn.h"
#include "src/model/norm.h"
#include "tests/test_util.h"

using namespace moe;

namespace {

constexpr double k_atol = 1e-7, k_rtol = 1e-5;
constexpr double k_init_std = 0.5;  // large weights: gradients far from zero, routing far from ties

// sum_i a[i] * w[i]: the scalar objective of every check (random fixed weights w).
double weighted_sum(const Tensor& a, const std::vector<double>& w) {
  auto v = a.to_vector<double>();
  REQUIRE(v.size() == w.size());
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

Tensor f64_tensor(const std::vector<double>& values, const Shape& shape) {
  return Tensor::from_vector(values, shape, DType::f64);
}

// The analytic gradient against central differences of f w.r.t. every element of wrt. The
// numeric gradient must not be (near) zero, so that the comparison cannot pass vacuously.
void check_gradient(const std::vector<double>& analytic, Tensor& wrt, const std::function<double()>& f,
                    const std::string& what) {
  auto numeric = test::numeric_gradient(wrt, f);
  INFO(what << ": max |numeric gradient| = " << max_abs(numeric));
  REQUIRE(max_abs(numeric) > 1e-3);
  test::require_close(analytic, numeric, k_atol, k_rtol, what);
}

void check_param_gradients(ParamStore& store, const std::function<double()>& f) {
  REQUIRE(!store.infos().empty());
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    Tensor p = store.param(id);
    check_gradient(store.grad(id).to_vector<double>(), p, f, store.info(id).name);
  }
}

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
  ExpertGroup group(store, "experts", experts, d, d_expert, act, k_init_std, k_init_std);
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

TEST_CASE("local dispatcher dispatch and combine gradients match finite differences",
          "[parallel][gradcheck][module]") {
  auto k = GENERATE(int64_t{1}, int64_t{2}, int64_t{3});
  INFO("top_k " << k);
  const int64_t tokens = 7, d = 5, experts = 4, rows = tokens * k;
  LocalDispatcher dispatcher(experts);
  Tensor ids = distinct_ids(tokens, k, experts, 41 + static_cast<uint64_t>(k));
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 42);
  Tensor weights = test::random_tensor({tokens, k}, DType::f64, 43, Device::cpu(), 0.2, 1.0);
  // Stand-in for the experts: a fixed multiplier per sorted row and column, so a wrong
  // permutation in either direction changes the answer.
  auto m = test::random_values(rows * d, 44, 0.5, 2.0);
  auto w = test::random_values(tokens * d, 45);
  auto apply_m = [&](const Tensor& t) {
    auto v = t.to_vector<double>();
    for (size_t i = 0; i < v.size(); ++i) v[i] *= m[i];
    return f64_tensor(v, t.shape());
  };
  auto objective = [&]() {
    DispatchSaved s;
    Tensor x_sorted = dispatcher.dispatch(x, ids, s);
    return weighted_sum(dispatcher.combine(s, apply_m(x_sorted), weights), w);
  };

  DispatchSaved saved;
  Tensor x_sorted = dispatcher.dispatch(x, ids, saved);
  REQUIRE(x_sorted.size(0) == rows);
  Tensor y_sorted = apply_m(x_sorted);
  dispatcher.combine(saved, y_sorted, weights);
  Tensor dy_sorted, dweights;
  dispatcher.combine_backward(saved, y_sorted, weights, f64_tensor(w, {tokens, d}), dy_sorted, dweights);
  Tensor dx = dispatcher.dispatch_backward(saved, apply_m(dy_sorted));
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_gradient(dweights.to_vector<double>(), weights, objective, "dweights");
}

TEST_CASE("dispatch then combine with unit weights returns k * x; payload rows carry their token",
          "[parallel][module][invariant]") {
  auto k = GENERATE(int64_t{1}, int64_t{2}, int64_t{3});
  INFO("top_k " << k);
  const int64_t tokens = 9, d = 4, experts = 5, rows = tokens * k;
  // Routing from a real router (renormalised weights), whose weights are then replaced by ones.
  ParamStore store;
  TopKSoftmaxRouter router(store, "router", d, experts, k, true, k_init_std);
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
  for (auto& v : kx) v *= static_cast<double>(k);
  REQUIRE(out.to_vector<double>() == kx);  // integers: exact

  // And its gradient: combine_backward then dispatch_backward returns k * dout; d(weight) of a
  // slot is dout[t] . x[t].
  auto dout_v = test::random_values(tokens * d, 53);
  Tensor dy_sorted, dweights;
  dispatcher.combine_backward(saved, x_sorted, ones, f64_tensor(dout_v, {tokens, d}), dy_sorted, dweights);
  Tensor dx = dispatcher.dispatch_backward(saved, dy_sorted);
  std::vector<double> k_dout(dout_v), expected_dw(static_cast<size_t>(rows));
  for (auto& v : k_dout) v *= static_cast<double>(k);
  for (int64_t t = 0; t < tokens; ++t) {
    double dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += dout_v[static_cast<size_t>(t * d + c)] * xv[static_cast<size_t>(t * d + c)];
    for (int64_t s = 0; s < k; ++s) expected_dw[static_cast<size_t>(t * k + s)] = dot;
  }
  test::require_close(dx.to_vector<double>(), k_dout, 1e-12, 1e-12, "dx = k * dout");
  test::require_close(dweights.to_vector<double>(), expected_dw, 1e-10, 1e-12, "dweights");
}

namespace {
struct RouterVariant {
  int64_t top_k;
  bool renormalize;
};
}  // namespace

TEST_CASE("top-k softmax router gradients match finite differences", "[routing][gradcheck][module]") {
  auto v = GENERATE(RouterVariant{1, false}, RouterVariant{1, true}, RouterVariant{2, false}, RouterVariant{2, true});
  INFO("top_k " << v.top_k << " renormalize " << v.renormalize);
  const int64_t tokens = 7, d = 6, experts = 4;
  ParamStore store;
  TopKSoftmaxRouter router(store, "router", d, experts, v.top_k, v.renormalize, k_init_std);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(61);

  Tensor x = test::random_tensor({tokens, d}, DType::f64, 62, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(tokens * v.top_k, 63);      // d objective / d weights
  auto expert_grad = test::random_values(experts, 64);      // d objective / d probs[t, i], every t
  auto objective_of = [&](const Routing& r) {
    double f = weighted_sum(r.weights, w);
    auto p = r.probs.to_vector<double>();
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t i = 0; i < experts; ++i)
        f += expert_grad[static_cast<size_t>(i)] * p[static_cast<size_t>(t * experts + i)];
    return f;
  };

  store.zero_grads();
  RouterSaved saved;
  Routing routing = router.route(x, RouteInputs{}, saved);
  const auto ref_ids = routing.ids.to_vector<int32_t>();
  bool routing_changed = false;
  auto objective = [&]() {
    RouterSaved s;
    Routing r = router.route(x, RouteInputs{}, s);
    if (r.ids.to_vector<int32_t>() != ref_ids) routing_changed = true;
    return objective_of(r);
  };

  // backward adds into dx: start from a nonzero base and check the increment.
  auto base = test::random_values(tokens * d, 65);
  Tensor dx = f64_tensor(base, {tokens, d});
  router.backward(saved, f64_tensor(w, {tokens, v.top_k}), f64_tensor(expert_grad, {experts}), dx);
  auto dx_v = dx.to_vector<double>();
  for (size_t i = 0; i < dx_v.size(); ++i) dx_v[i] -= base[i];
  check_gradient(dx_v, x, objective, "dx");
  check_param_gradients(store, objective);
  REQUIRE(!routing_changed);

  auto first = snapshot_grads(store);
  Tensor dx2 = Tensor::zeros({tokens, d}, DType::f64);
  router.backward(saved, f64_tensor(w, {tokens, v.top_k}), f64_tensor(expert_grad, {experts}), dx2);
  require_grads_doubled(store, first);
}

TEST_CASE("switch aux loss matches a hand-computed example", "[routing][module]") {
  // T = 4 tokens, E = 3 experts, k = 2 (counts sum to T k = 8), alpha = 0.1.
  std::vector<double> probs_v = {0.5, 0.3, 0.2, 0.1, 0.6, 0.3, 0.25, 0.25, 0.5, 0.7, 0.2, 0.1};
  Tensor probs = f64_tensor(probs_v, {4, 3});
  std::vector<int64_t> counts = {4, 3, 1};
  // f = counts / 8 = (0.5, 0.375, 0.125); P = column sums / 4 = (1.55, 1.35, 1.1) / 4
  //   = (0.3875, 0.3375, 0.275); sum f P = 0.19375 + 0.1265625 + 0.034375 = 0.3546875;
  // L = 0.1 * 3 * 0.3546875 = 0.10640625; dL/dprobs[t,i] = 0.1 * 3 * f_i / 4 = 0.075 f_i.
  AuxLossResult r = switch_aux_loss(probs, counts, 2, 0.1);
  REQUIRE(std::abs(r.value - 0.10640625) < 1e-15);
  test::require_close(r.expert_grad.to_vector<double>(), {0.0375, 0.028125, 0.009375}, 1e-15, 1e-14,
                      "expert_grad");

  // k = 1 on the same probs: counts sum to T = 4, f = (0.5, 0.25, 0.25);
  // sum f P = 0.19375 + 0.084375 + 0.06875 = 0.346875; L = 0.3 * 0.346875 = 0.1040625.
  AuxLossResult r1 = switch_aux_loss(probs, {2, 1, 1}, 1, 0.1);
  REQUIRE(std::abs(r1.value - 0.1040625) < 1e-15);
  test::require_close(r1.expert_grad.to_vector<double>(), {0.0375, 0.01875, 0.01875}, 1e-15, 1e-14,
                      "expert_grad k=1");
}

TEST_CASE("switch aux loss gradient w.r.t. probs matches finite differences", "[routing][gradcheck][module]") {
  const int64_t tokens = 6, experts = 4, top_k = 2;
  const double alpha = 0.3;
  Tensor probs = test::random_tensor({tokens, experts}, DType::f64, 71, Device::cpu(), 0.05, 1.0);
  const std::vector<int64_t> counts = {5, 0, 4, 3};  // fixed: no gradient through the choice
  auto objective = [&]() { return switch_aux_loss(probs, counts, top_k, alpha).value; };
  AuxLossResult r = switch_aux_loss(probs, counts, top_k, alpha);
  auto eg = r.expert_grad.to_vector<double>();
  REQUIRE(eg.size() == static_cast<size_t>(experts));
  std::vector<double> analytic;  // the same expert_grad for every token
  for (int64_t t = 0; t < tokens; ++t) analytic.insert(analytic.end(), eg.begin(), eg.end());
  check_gradient(analytic, probs, objective, "dprobs");
  REQUIRE(eg[1] == 0.0);  // an expert with no routed slots contributes nothing
}

namespace {
struct MoeVariant {
  int64_t top_k;
  bool renormalize;
  ops::Activation activation;
};
}  // namespace

TEST_CASE("MoE layer gradients match finite differences", "[experts][gradcheck][module]") {
  auto v = GENERATE(MoeVariant{2, true, ops::Activation::swiglu}, MoeVariant{1, false, ops::Activation::gelu},
                    MoeVariant{2, false, ops::Activation::relu}, MoeVariant{1, true, ops::Activation::geglu});
  INFO("top_k " << v.top_k << " renormalize " << v.renormalize << " activation " << ops::activation_name(v.activation));
  const int64_t tokens = 9, d = 6;
  MoeLayerConfig cfg;
  cfg.d_model = d;
  cfg.num_experts = 4;
  cfg.top_k = v.top_k;
  cfg.d_expert = 5;
  cfg.renormalize = v.renormalize;
  cfg.activation = v.activation;
  cfg.aux_loss_coef = 0.1;
  cfg.init_std = k_init_std;
  cfg.out_init_std = k_init_std;
  const float aux_scale = 0.5f;
  ParamStore store;
  MoeLayer moe(store, "moe", cfg);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(81);
  REQUIRE(store.infos().size() == 3);  // router.weight, experts.w_up, experts.w_down

  Tensor x = test::random_tensor({tokens, d}, DType::f64, 82, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(tokens * d, 83);

  store.zero_grads();
  MoeLayerSaved saved;
  moe.forward(x, RouteInputs{}, saved);
  REQUIRE(saved.stats.aux_loss > 0);
  const auto ref_ids = saved.router.routing.ids.to_vector<int32_t>();
  bool routing_changed = false;
  auto objective = [&]() {
    MoeLayerSaved s;
    Tensor y = moe.forward(x, RouteInputs{}, s);
    if (s.router.routing.ids.to_vector<int32_t>() != ref_ids) routing_changed = true;
    return weighted_sum(y, w) + aux_scale * s.stats.aux_loss;
  };

  Tensor dy = f64_tensor(w, {tokens, d});
  Tensor dx = moe.backward(saved, dy, aux_scale);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);
  REQUIRE(!routing_changed);

  auto first = snapshot_grads(store);
  moe.backward(saved, dy, aux_scale);
  require_grads_doubled(store, first);
}

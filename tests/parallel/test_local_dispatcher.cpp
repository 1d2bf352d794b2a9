// The local dispatcher: f64 gradient checks of dispatch and combine with dropped slots, and the
// invariants (unit-weight round trip, payload rows carry their token, dropped slots pass nothing).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "parallel/local_dispatcher.h"
#include "routing/topk_router.h"  // a real router's weights for the round-trip invariant
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using test::check_gradient;
using test::distinct_ids;
using test::f64_tensor;
using test::weighted_sum;
using test::k_init_std;

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
  auto m = test::random_values(tokens * k * d, 44, 0.5, 2.0);  // every slot has a row (dropped: padding)
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
  // A row per slot; the used rows, as the device offsets say, then zero padding for the dropped.
  REQUIRE(x_sorted.size(0) == tokens * k);
  REQUIRE(saved.offsets.to_vector<int32_t>().back() == rows);
  const std::vector<int64_t> counts = saved.host_routed_counts();
  REQUIRE(std::accumulate(counts.begin(), counts.end(), int64_t{0}) == rows);
  const std::vector<double> sorted_values = x_sorted.to_vector<double>();
  for (size_t i = static_cast<size_t>(rows * d); i < sorted_values.size(); ++i) REQUIRE(sorted_values[i] == 0.0);
  auto slot_pos = saved.slot_pos.to_vector<int32_t>();
  for (size_t s : dropped) REQUIRE(slot_pos[s] == -1);
  Tensor y_sorted = apply_m(x_sorted);
  dispatcher.combine(saved, y_sorted, weights);
  Tensor dy_sorted, dweights;
  dispatcher.combine_backward(saved, y_sorted, weights, f64_tensor(w, {tokens, d}), dy_sorted, dweights);
  auto dw = dweights.to_vector<double>();
  for (size_t s : dropped) REQUIRE(dw[s] == 0.0);
  Tensor dx = dispatcher.dispatch_backward(saved, apply_m(dy_sorted), Tensor());
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  // With an addend (the shared experts' input gradient) it lands in the same sum.
  Tensor add = f64_tensor(test::random_values(tokens * d, 77), {tokens, d});
  std::vector<double> dx_plus = dx.to_vector<double>();
  const std::vector<double> add_v = add.to_vector<double>();
  for (size_t i = 0; i < dx_plus.size(); ++i) dx_plus[i] += add_v[i];
  test::require_close(dispatcher.dispatch_backward(saved, apply_m(dy_sorted), add).to_vector<double>(), dx_plus,
                      1e-13, 1e-13, "dx + add");
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
  REQUIRE(saved.host_routed_counts() == expected_counts);
  REQUIRE(saved.sorted_tokens.to_vector<int32_t>() == expected_tokens);
  auto xs = x_sorted.to_vector<double>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c)
      REQUIRE(xs[static_cast<size_t>(r * d + c)] == xv[static_cast<size_t>(expected_tokens[static_cast<size_t>(r)] * d + c)]);
  // A backward that dropped the rows makes the same ones again from x.
  REQUIRE(dispatcher.rows_are_local());
  REQUIRE(dispatcher.redispatch(saved, x).to_vector<double>() == xs);
  REQUIRE_THROWS_WITH(dispatcher.redispatch(saved, x.rows(0, tokens - 1)),
                      Catch::Matchers::Contains("redispatch of [" + std::to_string(tokens - 1)));
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
  Tensor dx = dispatcher.dispatch_backward(saved, dy_sorted, Tensor());
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
  REQUIRE(saved.host_routed_counts() == std::vector<int64_t>{4, 0, 5});
  REQUIRE(saved.offsets.to_vector<int32_t>() == std::vector<int32_t>{0, 4, 4, 9});
  REQUIRE(x_sorted.size(0) == tokens * k);  // 9 used rows, then 3 rows of padding
  const std::vector<int32_t> sorted_tokens = saved.sorted_tokens.to_vector<int32_t>();
  REQUIRE(std::vector<int32_t>(sorted_tokens.begin() + 9, sorted_tokens.end()) == std::vector<int32_t>{-1, -1, -1});
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

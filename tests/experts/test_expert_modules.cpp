// f64 finite-difference gradient checks of every registered Experts implementation (experts with
// no rows) and of the shared experts (gated and ungated). The registry and the comparison with
// the loop reference: test_experts.cpp; the MoE layer as a whole: test_moe_layer.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "experts/experts_registry.h"
#include "experts/shared_experts.h"
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using test::check_gradient;
using test::check_param_gradients;
using test::f64_tensor;
using test::max_abs;
using test::sigmoid;
using test::require_grads_doubled;
using test::snapshot_grads;
using test::weighted_sum;
using test::k_init_std;

TEST_CASE("experts gradients match finite differences, with experts that receive no rows",
          "[experts][gradcheck][module]") {
  auto act = GENERATE(ops::Activation::swiglu, ops::Activation::gelu);
  auto kind = GENERATE(range(size_t{0}, experts_kinds().size()));
  const char* impl = experts_kinds()[kind].name;
  INFO("activation " << ops::activation_name(act) << " experts_impl " << impl);
  const int64_t experts = 5, d = 6, d_expert = 4;
  const std::vector<int64_t> counts = {3, 0, 4, 2, 0};  // experts 1 and 4 (the last) get nothing
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const ExpertRows split = ExpertRows::from_counts(counts);
  ParamStore store;
  auto group = make_experts(impl, store, "experts", {experts, 0, experts, d, d_expert, act, k_init_std, k_init_std});
  REQUIRE(std::string(group->name()) == impl);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(31);

  Tensor x = test::random_tensor({rows, d}, DType::f64, 32, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(rows * d, 33);
  auto objective = [&]() {
    ExpertsSaved s;
    return weighted_sum(group->forward(x, split, s), w);
  };

  store.zero_grads();
  ExpertsSaved saved;
  group->forward(x, split, saved);
  Tensor dy = f64_tensor(w, {rows, d});
  Tensor dx = group->backward(saved, dy);
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
  group->backward(saved, dy);
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

// f64 finite-difference gradient check of the dense FFN (every activation).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "src/nn/dense_ffn.h"
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using test::check_gradient;
using test::check_param_gradients;
using test::f64_tensor;
using test::require_grads_doubled;
using test::snapshot_grads;
using test::weighted_sum;
using test::k_init_std;

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

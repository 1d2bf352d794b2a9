// The MoE layer on the GPU with the shared experts on the side stream against everything on one
// stream. Either way the combine adds the shared experts' output in its own pass (after joining
// the side stream), and in backward the un-permute adds their input gradient (side stream) or they
// add it into the routed one (one stream). A missing join, a double or a dropped addition shows.
#include <catch2/catch.hpp>

#include <vector>

#include "experts/moe_layer.h"
#include "routing/router_registry.h"
#include "src/config/moe_shape.h"
#include "src/model/model.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

struct LayerRun {
  std::vector<double> y, dx;
  std::vector<std::vector<double>> grads;
};

}  // namespace

TEST_CASE("cuda MoE layer: the shared experts on the side stream give one stream's results", "[cuda][moe]") {
  ModelConfig m;
  m.d_model = 64;
  m.vocab_size = 64;
  m.seq_len = 64;
  MoeConfig moe;
  moe.num_experts = 8;
  moe.top_k = 2;
  moe.d_expert = 64;
  moe.num_shared_experts = 2;
  moe.shared_gate = true;
  moe.aux_loss_coef = 0.01;
  const MoeShape shape = moe_shape(moe);
  const int64_t tokens = 512;
  // No residual: the output is the routed part plus the shared one, of comparable size, so the
  // shared part counted twice or not at all fails the comparison.
  const Tensor x = random_mirror({tokens, m.d_model}, DType::bf16, 11).gpu;
  const Tensor dy = random_mirror({tokens, m.d_model}, DType::bf16, 12).gpu;
  const std::vector<int32_t> ids = random_int_values(tokens, m.vocab_size, 13);
  RouteInputs inputs;
  inputs.tokens = &ids;
  inputs.seq_len = m.seq_len;
  auto run = [&](bool side_stream) {
    ParamStore store;
    MoeLayerConfig config = moe_layer_config(m, moe, ops::Activation::swiglu, 0.02);
    config.shared_stream = side_stream;
    RouterSpec spec{m.d_model, m.vocab_size, shape.num_experts, shape.top_k, 0, m.init_std};
    MoeLayer layer(store, "moe", config, make_router(store, "moe.router", moe, spec));
    store.allocate(gpu(), DType::bf16);
    store.initialize(7);
    store.zero_grads();
    LayerRun r;
    MoeLayerSaved saved;
    r.y = layer.forward(x, inputs, saved).to_vector<double>();
    r.dx = layer.backward(saved, dy, 1.0f).to_vector<double>();
    for (size_t i = 0; i < store.infos().size(); ++i)
      r.grads.push_back(store.grad(static_cast<ParamId>(i)).to_vector<double>());
    return r;
  };
  const LayerRun side = run(true), one = run(false);
  const Tolerance tol = bf16_tol();
  require_close(side.y, one.y, tol.atol * max_abs(one.y), tol.rtol, "y");
  require_close(side.dx, one.dx, tol.atol * max_abs(one.dx), tol.rtol, "dx");
  REQUIRE(side.grads.size() == one.grads.size());
  for (size_t i = 0; i < one.grads.size(); ++i)  // the parameters' gradients do not read dx
    require_close(side.grads[i], one.grads[i], 1e-4 * max_abs(one.grads[i]), 1e-4, "gradient " + std::to_string(i));
}

}  // namespace moe::test

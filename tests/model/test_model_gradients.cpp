// f64 finite-difference gradient check of whole models (attention, dense FFN and an MoE layer
// with its router and Switch auxiliary loss), across norms, positions and head tying.
#include <catch2/catch.hpp>

#include "src/model/model.h"
#include "tests/test_util.h"

using namespace moe;

namespace {

struct Variant {
  std::string norm, positions, activation;
  bool tie;
  int64_t kv_heads;
};

Config tiny_config(const Variant& v) {
  Config c;
  c.model.vocab_size = 13;
  c.model.d_model = 8;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = v.kv_heads;
  c.model.seq_len = 4;
  c.model.norm = v.norm;
  c.model.positions = v.positions;
  c.model.activation = v.activation;
  c.model.d_ff = 12;
  c.model.tie_embeddings = v.tie;
  c.model.init_std = 0.5;  // large weights: gradients far from zero, routing far from ties
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.d_expert = 6;
  c.moe.every = 1;
  c.moe.first_dense = 1;  // layer 0 dense, layer 1 MoE
  c.moe.aux_loss_coef = 0.1;
  return c;
}

Batch tiny_batch(const Config& c, uint64_t seed) {
  int64_t n = 2 * c.model.seq_len;
  Batch b;
  b.inputs = test::random_ids(n, c.model.vocab_size, seed);
  auto targets = test::random_ids(n, c.model.vocab_size, seed + 1).to_vector<int32_t>();
  targets[3] = -1;  // one ignored target
  b.targets = Tensor::from_vector(targets, {n}, DType::i32);
  b.batch_size = 2;
  return b;
}

}  // namespace

TEST_CASE("model gradients match finite differences", "[model][gradcheck]") {
  auto v = GENERATE(Variant{"rmsnorm", "rope", "swiglu", true, 1}, Variant{"layernorm", "learned", "gelu", false, 2},
                    Variant{"rmsnorm", "rope", "geglu", false, 2}, Variant{"layernorm", "rope", "relu", true, 1});
  INFO("norm " << v.norm << " positions " << v.positions << " activation " << v.activation << " tied " << v.tie);
  Config c = tiny_config(v);
  Model model(c.model, c.moe);
  REQUIRE(model.num_moe_layers() == 1);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(7);
  Batch batch = tiny_batch(c, 11);
  const float loss_scale = 0.25f, aux_scale = 0.5f;

  auto objective = [&]() {
    ModelSaved saved;
    ForwardOutput out = model.forward(batch, saved);
    return loss_scale * out.loss_sum + aux_scale * out.aux_loss;
  };

  ParamStore& store = model.params();
  store.zero_grads();
  ModelSaved saved;
  ForwardOutput out = model.forward(batch, saved);
  REQUIRE(out.num_targets == 7);
  REQUIRE(out.aux_loss > 0);
  model.backward(batch, saved, loss_scale, aux_scale);

  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    Tensor p = store.param(id);
    auto numeric = test::numeric_gradient(p, objective);
    test::require_close(store.grad(id).to_vector<double>(), numeric, 1e-7, 1e-5, store.info(id).name);
  }
}

TEST_CASE("expert parameters are counted k of E times in the active parameters", "[model]") {
  Config c = tiny_config({"rmsnorm", "rope", "swiglu", true, 1});
  Model model(c.model, c.moe);
  int64_t experts = 0, total = 0;
  for (const auto& p : model.params().infos()) {
    total += p.numel();
    if (p.group == ParamGroup::expert) experts += p.numel();
  }
  REQUIRE(model.active_params() == total - experts + experts / c.moe.num_experts * c.moe.top_k);
}

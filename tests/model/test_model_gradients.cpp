// f64 finite-difference gradient check of whole models (attention, dense FFN and an MoE layer
// with its router and balancing losses), across norms, positions, head tying and the MoE
// options (sigmoid routing with shared gated experts and the z-loss, fine-grained experts);
// plus the aux-loss-free expert-bias update through the model.
#include <catch2/catch.hpp>

#include <cmath>

#include "src/model/model.h"
#include "tests/test_util.h"

using namespace moe;

namespace {

struct Variant {
  std::string norm, positions, activation;
  bool tie;
  int64_t kv_heads;
  // MoE options on top of the default (softmax_topk, Switch loss).
  std::string router = "softmax_topk";
  int64_t num_shared = 0;
  bool shared_gate = false;
  double z_loss = 0;
  int64_t granularity = 1;
  bool documents = false;  // model.reset_positions and reset_attention, with EOS in the batch
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
  c.moe.router = v.router;
  c.moe.num_shared_experts = v.num_shared;
  c.moe.shared_gate = v.shared_gate;
  c.moe.z_loss_coef = v.z_loss;
  c.moe.granularity = v.granularity;
  c.model.reset_positions = c.model.reset_attention = v.documents;
  validate_config(c);
  return c;
}

Batch tiny_batch(const Config& c, uint64_t seed) {
  int64_t n = 2 * c.model.seq_len;
  auto inputs = test::random_ids(n, c.model.vocab_size, seed).to_vector<int32_t>();
  if (c.model.reset_attention) {
    inputs[1] = inputs[6] = static_cast<int32_t>(c.model.eos_id);  // documents of 2 + 2 and 3 + 1 tokens at least
  }
  auto targets = test::random_ids(n, c.model.vocab_size, seed + 1).to_vector<int32_t>();
  targets[3] = -1;  // one ignored target
  return make_batch(inputs, targets, 2, Device::cpu());
}

// The routing of every MoE layer after capacity (what dispatch used), concatenated.
std::vector<int32_t> routing_of(const ModelSaved& saved) {
  std::vector<int32_t> out;
  for (const auto& b : saved.blocks)
    if (b.moe.ids.defined()) {
      auto ids = b.moe.ids.to_vector<int32_t>();
      out.insert(out.end(), ids.begin(), ids.end());
    }
  return out;
}

}  // namespace

TEST_CASE("model gradients match finite differences", "[model][gradcheck]") {
  auto v = GENERATE(Variant{"rmsnorm", "rope", "swiglu", true, 1}, Variant{"layernorm", "learned", "gelu", false, 2},
                    Variant{"rmsnorm", "rope", "geglu", false, 2}, Variant{"layernorm", "rope", "relu", true, 1},
                    Variant{"rmsnorm", "rope", "swiglu", false, 1, "sigmoid", 1, true, 0.01},
                    Variant{"rmsnorm", "learned", "gelu", true, 2, "softmax_topk", 0, false, 0, 2},
                    Variant{"rmsnorm", "rope", "swiglu", true, 1, "softmax_topk", 0, false, 0, 1, true},
                    Variant{"layernorm", "learned", "gelu", false, 2, "softmax_topk", 0, false, 0, 1, true});
  INFO("norm " << v.norm << " positions " << v.positions << " activation " << v.activation << " tied " << v.tie
               << " router " << v.router << " shared " << v.num_shared << " gate " << v.shared_gate << " z "
               << v.z_loss << " granularity " << v.granularity << " documents " << v.documents);
  Config c = tiny_config(v);
  Model model(c.model, c.moe);
  REQUIRE(model.num_moe_layers() == 1);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(7);
  Batch batch = tiny_batch(c, 11);
  const float loss_scale = 0.25f, aux_scale = 0.5f;

  ParamStore& store = model.params();
  store.zero_grads();
  ModelSaved saved;
  ForwardOutput out = model.forward(batch, saved);
  REQUIRE(out.num_targets == 7);
  REQUIRE(out.aux_loss > 0);
  REQUIRE(out.moe_stats.size() == 1);
  const MoeLayerStats& st = out.moe_stats[0];
  REQUIRE(st.tokens_per_expert.size() == static_cast<size_t>(c.moe.num_experts * v.granularity));
  REQUIRE(st.slots == batch.inputs.numel() * c.moe.top_k * v.granularity);
  REQUIRE(st.balance.count("switch") == 1);
  REQUIRE(st.balance.count("z") == (v.z_loss > 0 ? 1u : 0u));
  if (v.num_shared > 0) REQUIRE_NOTHROW(store.find("layers.1.moe.shared.w_up"));
  if (v.shared_gate) REQUIRE_NOTHROW(store.find("layers.1.moe.shared.gate"));
  model.backward(batch, saved, loss_scale, aux_scale);

  const auto ref_routing = routing_of(saved);
  bool routing_changed = false;
  auto objective = [&]() {
    ModelSaved s;
    ForwardOutput o = model.forward(batch, s);
    if (routing_of(s) != ref_routing) routing_changed = true;
    return loss_scale * o.host_loss_sum() + aux_scale * o.aux_loss;
  };

  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    Tensor p = store.param(id);
    auto numeric = test::numeric_gradient(p, objective);
    test::require_close(store.grad(id).to_vector<double>(), numeric, 1e-7, 1e-5, store.info(id).name);
  }
  REQUIRE(!routing_changed);
}

TEST_CASE("expert parameters are counted k of E times in the active parameters", "[model]") {
  auto granularity = GENERATE(int64_t{1}, int64_t{2});
  Variant v{"rmsnorm", "rope", "swiglu", true, 1};
  v.granularity = granularity;
  Config c = tiny_config(v);
  Model model(c.model, c.moe);
  int64_t experts = 0, total = 0;
  for (const auto& p : model.params().infos()) {
    total += p.numel();
    if (p.group == ParamGroup::expert) experts += p.numel();
  }
  // m*E experts of d_expert/m with m*k active: the same k/E fraction.
  REQUIRE(model.active_params() == total - experts + experts / c.moe.num_experts * c.moe.top_k);
}

TEST_CASE("expert-bias update moves each bias by -rate * sign(load - mean) and steers the selection",
          "[model][routing][bias]") {
  Config c = tiny_config({"rmsnorm", "rope", "swiglu", true, 1, "sigmoid"});
  c.model.num_layers = 3;  // layer 0 dense, layers 1 and 2 MoE
  c.moe.expert_bias_rate = 0.001;
  Model model(c.model, c.moe);
  REQUIRE(model.num_moe_layers() == 2);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(7);
  REQUIRE(model.expert_biases() == std::vector<std::vector<double>>{{0, 0, 0, 0}, {0, 0, 0, 0}});

  // Layer 1: mean 3; layer 2: balanced (nothing moves).
  model.update_expert_biases({{5, 1, 3, 3}, {2, 2, 2, 2}}, 0.1);
  auto b = model.expert_biases();
  test::require_close(b[0], {-0.1, 0.1, 0.0, 0.0}, 1e-15, 0, "layer 1 after one update");
  test::require_close(b[1], {0, 0, 0, 0}, 0, 0, "layer 2 after one update");
  // The rate of the call (not moe.expert_bias_rate), accumulated onto the current biases.
  model.update_expert_biases({{0, 4, 4, 0}, {7, 0, 0, 1}}, 0.25);
  b = model.expert_biases();
  test::require_close(b[0], {0.15, -0.15, -0.25, 0.25}, 1e-15, 0, "layer 1 after two updates");
  test::require_close(b[1], {-0.25, 0.25, 0.25, 0.25}, 1e-15, 0, "layer 2 after two updates");

  // A bias far above the sigmoid scores' spread puts that expert in every token's top k, while
  // the combine weights stay the unbiased scores renormalised (they sum to 1).
  model.update_expert_biases({{0, 9, 9, 9}, {9, 0, 9, 9}}, 5.0);
  Batch batch = tiny_batch(c, 11);
  ModelSaved saved;
  ForwardOutput out = model.forward(batch, saved);
  const int64_t tokens = batch.inputs.numel();
  REQUIRE(out.moe_stats[0].tokens_per_expert[0] == tokens);
  REQUIRE(out.moe_stats[1].tokens_per_expert[1] == tokens);
  for (const auto& block : saved.blocks) {
    if (!block.moe.weights.defined()) continue;
    auto w = block.moe.weights.to_vector<double>();
    for (int64_t t = 0; t < tokens; ++t) REQUIRE(std::abs(w[static_cast<size_t>(2 * t)] + w[static_cast<size_t>(2 * t + 1)] - 1.0) < 1e-12);
  }

  // Without moe.expert_bias_rate the routers have no bias: empty vectors, updates do nothing.
  Config plain = tiny_config({"rmsnorm", "rope", "swiglu", true, 1, "sigmoid"});
  Model unbiased(plain.model, plain.moe);
  unbiased.allocate(Device::cpu(), DType::f64);
  unbiased.initialize(7);
  REQUIRE(unbiased.expert_biases() == std::vector<std::vector<double>>{{}});
  REQUIRE_NOTHROW(unbiased.update_expert_biases({{5, 1, 3, 3}}, 0.1));
  REQUIRE(unbiased.expert_biases() == std::vector<std::vector<double>>{{}});
}

namespace {
struct DenseFeatures {
  const char* name;
  std::string norm, positions, activation, attention_bias, rope_scaling;
  bool ffn_bias, qk_norm;
};
}  // namespace

TEST_CASE("dense models with biases, QK-norm and rope scaling: gradients match finite differences",
          "[model][gradcheck]") {
  auto f = GENERATE(DenseFeatures{"gpt2", "layernorm", "learned", "gelu", "all", "none", true, false},
                    DenseFeatures{"qwen2", "rmsnorm", "rope", "swiglu", "qkv", "linear", false, false},
                    DenseFeatures{"llama mlp_bias", "rmsnorm", "rope", "swiglu", "all", "llama3", true, false},
                    DenseFeatures{"olmoe-like", "rmsnorm", "rope", "swiglu", "none", "none", false, true});
  INFO(f.name);
  Config c = tiny_config(Variant{f.norm, f.positions, f.activation, false, 1});
  c.model.attention_bias = f.attention_bias;
  c.model.ffn_bias = f.ffn_bias;
  c.model.qk_norm = f.qk_norm;
  c.model.rope_scaling = f.rope_scaling;
  c.model.rope_factor = 3.0;
  c.model.rope_original_max_positions = 8;
  c.model.rope_theta = 16.0;  // head_dim 4: pair 1 (wavelength 25) in llama3's smoothed band
  c.model.rope_low_freq_factor = 0.25;
  c.moe.num_experts = 0;
  validate_config(c);
  Model model(c.model, c.moe);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(7);
  ParamStore& store = model.params();
  int num_biases = 0;
  for (size_t i = 0; i < store.infos().size(); ++i) {  // biases and norm weights away from 0 and 1
    const ParamInfo& p = store.info(static_cast<ParamId>(i));
    if (p.kind != ParamKind::norm_or_bias) continue;
    for (const char* b : {".bq", ".bk", ".bv", ".bo", ".b_up", ".b_down"}) num_biases += p.name.ends_with(b);
    store.load_master_from_host(static_cast<ParamId>(i),
                                test::f64_tensor(test::random_values(p.numel(), 100 + i, 0.5, 1.5), p.shape));
  }
  const int per_layer = (f.attention_bias == "all" ? 4 : f.attention_bias == "qkv" ? 3 : 0) + (f.ffn_bias ? 2 : 0);
  REQUIRE(num_biases == 2 * per_layer);
  Batch batch = tiny_batch(c, 11);
  store.zero_grads();
  ModelSaved saved;
  model.forward(batch, saved);
  model.backward(batch, saved, 0.25f, 0.0f);
  auto objective = [&]() {
    ModelSaved s;
    return 0.25 * model.forward(batch, s).host_loss_sum();
  };
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    Tensor p = store.param(id);
    auto numeric = test::numeric_gradient(p, objective);
    test::require_close(store.grad(id).to_vector<double>(), numeric, 1e-7, 1e-5, store.info(id).name);
  }
}

// The encoder-decoder's pieces: f64 finite-difference gradients of the cross-attention module
// (queries, memory and projections) and of a whole encoder-decoder with MoE layers in both
// stacks, the memory's gradient reaching the encoder; each sequence reads only its own memory.
#include <catch2/catch.hpp>

#include <vector>

#include "src/model/cross_attention.h"
#include "src/model/model.h"
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using test::check_gradient;
using test::f64_tensor;
using test::k_init_std;
using test::weighted_sum;

namespace {

CrossAttentionConfig cross_config(int64_t heads, int64_t kv_heads, int64_t seq, int64_t memory_len) {
  return {16, heads, kv_heads, seq, memory_len, k_init_std, k_init_std};
}

}  // namespace

TEST_CASE("cross-attention gradients match finite differences", "[model][gradcheck][module]") {
  struct Heads {
    int64_t q, kv;
  };
  auto heads = GENERATE(Heads{4, 4}, Heads{4, 2}, Heads{4, 1});
  auto lengths = GENERATE(std::vector<int64_t>{3, 7}, std::vector<int64_t>{6, 2}, std::vector<int64_t>{5, 5});
  INFO("heads " << heads.q << "/" << heads.kv << " queries " << lengths[0] << " memory " << lengths[1]);
  const int64_t batch = 2, seq = lengths[0], mem = lengths[1], d = 16;
  ParamStore store;
  CrossAttention cross(store, "cross", cross_config(heads.q, heads.kv, seq, mem));
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(5);
  Tensor x = test::random_tensor({batch * seq, d}, DType::f64, 12);
  Tensor memory = test::random_tensor({batch * mem, d}, DType::f64, 14);
  const auto w = test::random_values(batch * seq * d, 13);
  auto objective = [&]() {
    CrossAttention::Saved s;
    return weighted_sum(cross.forward(x, memory, batch, s), w);
  };
  store.zero_grads();
  CrossAttention::Saved saved;
  cross.forward(x, memory, batch, saved);
  Tensor d_memory = Tensor::zeros(memory.shape(), DType::f64, Device::cpu());
  Tensor dx = cross.backward(saved, f64_tensor(w, {batch * seq, d}), batch, d_memory);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_gradient(d_memory.to_vector<double>(), memory, objective, "d_memory");
  test::check_param_gradients(store, objective);
  // d_memory accumulates: a second backward doubles it.
  const auto once = d_memory.to_vector<double>();
  cross.backward(saved, f64_tensor(w, {batch * seq, d}), batch, d_memory);
  auto twice = once;
  for (double& g : twice) g *= 2;
  test::require_close(d_memory.to_vector<double>(), twice, 1e-12, 1e-12, "d_memory accumulates");
}

TEST_CASE("cross-attention reads only its own sequence's memory", "[model][module]") {
  const int64_t batch = 2, seq = 3, mem = 5, d = 16;
  ParamStore store;
  CrossAttention cross(store, "cross", cross_config(4, 2, seq, mem));
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(5);
  Tensor x = test::random_tensor({batch * seq, d}, DType::f64, 12);
  auto memory_values = test::random_values(batch * mem * d, 14);
  CrossAttention::Saved s1, s2;
  const auto before = cross.forward(x, f64_tensor(memory_values, {batch * mem, d}), batch, s1).to_vector<double>();
  for (int64_t i = mem * d; i < batch * mem * d; ++i) memory_values[static_cast<size_t>(i)] += 1.0;  // sequence 1's
  const auto after = cross.forward(x, f64_tensor(memory_values, {batch * mem, d}), batch, s2).to_vector<double>();
  for (int64_t i = 0; i < batch * seq * d; ++i) {
    if (i < seq * d) REQUIRE(after[static_cast<size_t>(i)] == before[static_cast<size_t>(i)]);
  }
  bool changed = false;
  for (int64_t i = seq * d; i < batch * seq * d; ++i) changed |= after[static_cast<size_t>(i)] != before[static_cast<size_t>(i)];
  REQUIRE(changed);
}

TEST_CASE("cross-attention refuses a memory of the wrong length", "[model][module]") {
  ParamStore store;
  CrossAttention cross(store, "cross", cross_config(4, 4, 3, 5));
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(5);
  CrossAttention::Saved s;
  REQUIRE_THROWS_WITH(cross.forward(test::random_tensor({6, 16}, DType::f64, 1), test::random_tensor({8, 16}, DType::f64, 2),
                                    2, s),
                      Catch::Contains("are not 2 sequences of 3 and 5 positions"));
}

namespace {

// A 2 + 2 layer encoder-decoder, MoE at layer 1 of each stack (moe.every = 2).
Config seq2seq_config(const std::string& positions, bool tie) {
  Config c;
  c.model.vocab_size = 13;
  c.model.d_model = 8;
  c.model.num_layers = 4;
  c.model.encoder_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 6;
  c.model.decoder_seq_len = 4;
  c.model.positions = positions;
  c.model.tie_embeddings = tie;
  c.model.d_ff = 12;
  c.model.init_std = 0.5;
  c.model.objective = "span_corruption";
  c.data.tokenizer = "unused.model";  // validation asks for one; the batch here is built by hand
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.d_expert = 6;
  c.moe.every = 2;
  c.moe.aux_loss_coef = 0.1;
  validate_config(c);
  return c;
}

}  // namespace

TEST_CASE("encoder-decoder gradients match finite differences, through the encoder", "[model][gradcheck]") {
  struct Variant {
    const char* positions;
    bool tie;
  };
  auto v = GENERATE(Variant{"rope", true}, Variant{"learned", false});
  INFO("positions " << v.positions << " tied " << v.tie);
  Config c = seq2seq_config(v.positions, v.tie);
  Model model(c.model, c.moe);
  REQUIRE(model.num_moe_layers() == 2);
  REQUIRE(is_moe_layer(c.model, c.moe, 1));
  REQUIRE(is_moe_layer(c.model, c.moe, 3));
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(7);
  const int64_t B = 2;
  auto enc = test::random_ids(B * c.model.seq_len, c.model.vocab_size, 3).to_vector<int32_t>();
  auto dec = test::random_ids(B * c.model.decoder_seq_len, c.model.vocab_size, 4).to_vector<int32_t>();
  auto targets = test::random_ids(B * c.model.decoder_seq_len, c.model.vocab_size, 5).to_vector<int32_t>();
  targets[3] = -1;  // a padded position
  Batch batch = make_seq2seq_batch(enc, dec, targets, B, Device::cpu());
  const float loss_scale = 0.25f, aux_scale = 0.5f;
  ParamStore& store = model.params();
  store.zero_grads();
  ModelSaved saved;
  ForwardOutput out = model.forward(batch, saved);
  REQUIRE(out.num_targets == 7);
  REQUIRE(out.moe_layer_index == std::vector<int>{1, 3});
  REQUIRE(model.backward(batch, saved, loss_scale, aux_scale).defined() == false);
  auto objective = [&]() {
    ModelSaved s;
    ForwardOutput o = model.forward(batch, s);
    return loss_scale * o.host_loss_sum() + aux_scale * o.aux_loss;
  };
  for (const char* name : {"layers.0.attn.wq", "encoder_norm.weight", "layers.2.cross_attn.wk",
                           "layers.3.cross_attn.wq", "layers.3.cross_norm.weight"}) {
    REQUIRE_NOTHROW(store.find(name));
  }
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    Tensor p = store.param(id);
    auto numeric = test::numeric_gradient(p, objective);
    test::require_close(store.grad(id).to_vector<double>(), numeric, 1e-7, 1e-5, store.info(id).name);
  }
  // The encoder's first layer learns only through the cross-attention's memory gradient.
  REQUIRE(test::max_abs(store.grad(store.find("layers.0.attn.wq")).to_vector<double>()) > 1e-4);
}

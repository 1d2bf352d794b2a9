// `moe convert --from-hf`: synthetic HF directories (written by tests/tools/hf_test_util.h, not the
// converter) of every supported family import into a model whose logits equal a double-precision
// reference forward computed from the HF tensors; single and sharded files, bf16/f16/f32; every
// refusal names the config.json field or tensor.
#include <catch2/catch.hpp>

#include "src/model/model.h"
#include "src/tools/hf_import.h"
#include "src/train/checkpoint.h"
#include "tests/test_util.h"
#include "tests/tools/hf_test_gpt2.h"
#include "tests/tools/hf_test_util.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
using test::TempDir;
using test::require_close;
namespace fs = std::filesystem;
using hf_test::json;

const std::vector<int32_t> k_tokens = {3, 17, 39, 0, 5, 5, 22, 11};

// Imports dir into run and returns the engine's logits of k_tokens (one sequence of 8).
std::vector<double> engine_logits(const std::string& dir, const std::string& run) {
  const HfImportResult r = import_hf(dir, run, 8);
  const Config c = load_config(run + "/config.toml");
  REQUIRE(c.model == r.model.spec.config.model);
  Model m(c.model, c.moe);
  m.allocate(Device::cpu(), DType::f32);
  read_checkpoint(r.checkpoint_dir, m.params(), nullptr);
  return m.logits(k_tokens, 1).to_vector<double>();
}

void check_family(const std::string& type, const std::string& dtype, bool sharded, json config = json()) {
  TempDir tmp("hf_import_" + type + dtype + (sharded ? "s" : ""));
  if (config.is_null()) config = hf_test::tiny_config(type);
  const hf_test::StMap w = hf_test::random_weights(config, dtype, 11);
  hf_test::write_hf_dir(tmp.path / "hf", config, w, sharded);
  const std::vector<double> got = engine_logits(tmp.str("hf"), tmp.str("run"));
  const std::vector<double> ref = hf_test::reference_logits(w, config, k_tokens);
  REQUIRE(got.size() == ref.size());
  require_close(got, ref, 1e-4, 1e-4, type + " logits");
}

TEST_CASE("llama, mistral, qwen2: imported logits equal the reference forward of the HF tensors", "[hf]") {
  check_family("llama", "BF16", false);
  check_family("llama", "F32", true);
  check_family("mistral", "F16", true);
  check_family("qwen2", "F32", false);
  json tied = hf_test::tiny_config("llama");
  tied["tie_word_embeddings"] = true;
  check_family("llama", "BF16", false, tied);
  json mha = hf_test::tiny_config("mistral");
  mha["num_key_value_heads"] = 4;
  mha["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};  // transformers 5
  check_family("mistral", "F32", false, mha);
}

TEST_CASE("attention and MLP biases and rope scaling: imported logits equal the reference forward", "[hf]") {
  json biased = hf_test::tiny_config("llama");
  biased["attention_bias"] = true;
  biased["mlp_bias"] = true;
  check_family("llama", "BF16", false, biased);
  // head_dim 4, theta 100: pair 0 (wavelength 6.3) kept, pair 1 (62.8) in the smoothed band.
  json llama3 = hf_test::tiny_config("llama");
  llama3["rope_theta"] = 100.0;
  llama3["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  check_family("llama", "F32", false, llama3);
  llama3["rope_theta"] = 500000.0;  // pair 1 (wavelength 4443) divided by the factor
  check_family("llama", "F32", false, llama3);
  json linear = hf_test::tiny_config("qwen2");
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  check_family("qwen2", "F32", false, linear);
}

TEST_CASE("gpt2: imported logits equal the reference forward of the HF tensors", "[hf]") {
  const json c = hf_test::tiny_gpt2_config();
  for (const std::string dtype : {"F32", "BF16"}) {
    TempDir tmp("hf_import_gpt2" + dtype);
    const hf_test::StMap w = hf_test::random_gpt2_weights(c, dtype, 17);
    hf_test::write_hf_dir(tmp.path / "hf", c, w, false);
    const std::vector<double> ref = hf_test::gpt2_reference_logits(w, c, k_tokens);
    require_close(engine_logits(tmp.str("hf"), tmp.str("run")), ref, 1e-4, 1e-4, "gpt2 logits " + dtype);
    // The original Hub layout: no "transformer." prefix, the causal-mask buffers saved.
    hf_test::StMap old;
    for (const auto& [name, t] : w) old[name.substr(12)] = t;
    old["h.0.attn.bias"] = hf_test::StTensor{dtype, {1, 1, 8, 8}, std::vector<float>(64, 1.0f)};
    hf_test::write_hf_dir(tmp.path / "old", c, old, false);
    require_close(engine_logits(tmp.str("old"), tmp.str("run_old")), ref, 1e-4, 1e-4, "gpt2 Hub-layout logits");
  }
  TempDir tmp("hf_import_gpt2_config");
  hf_test::write_hf_dir(tmp.path / "hf", c, hf_test::random_gpt2_weights(c, "F32", 3), false);
  const Config e = import_hf(tmp.str("hf"), tmp.str("run"), 0).model.spec.config;
  CHECK(e.model.seq_len == 8);
  CHECK(e.model.norm == "layernorm");
  CHECK(e.model.positions == "learned");
  CHECK(e.model.activation == "gelu");
  CHECK(e.model.d_ff == 64);
  CHECK(e.model.attention_bias == "all");
  CHECK(e.model.ffn_bias);
  CHECK(e.model.tie_embeddings);
}

TEST_CASE("mixtral, qwen2_moe, olmoe: imported logits equal the reference forward of the HF tensors", "[hf]") {
  check_family("olmoe", "F32", false);
  json olmoe = hf_test::tiny_config("olmoe");
  olmoe["norm_topk_prob"] = true;
  olmoe["attention_bias"] = true;
  check_family("olmoe", "BF16", true, olmoe);
  check_family("mixtral", "BF16", true);
  check_family("mixtral", "F32", false);
  check_family("qwen2_moe", "F16", false);
  json renorm = hf_test::tiny_config("qwen2_moe");
  renorm["norm_topk_prob"] = true;
  renorm["mlp_only_layers"] = json::array();
  check_family("qwen2_moe", "BF16", true, renorm);
}

// transformers 5 with save_original_format=False: experts fused into [E, 2f, d] and [E, d, f],
// Mixtral's block under "mlp.".
hf_test::StMap fuse_experts(const hf_test::StMap& w, const json& c) {
  const bool mixtral = c["model_type"] == "mixtral";
  const std::string block = mixtral ? "block_sparse_moe." : "mlp.";
  const int64_t num_experts = mixtral ? c["num_local_experts"].get<int64_t>() : c["num_experts"].get<int64_t>();
  hf_test::StMap out;
  for (const auto& [name, t] : w) {
    if (name.find(block + "experts.") == std::string::npos) {
      std::string renamed = name;
      if (mixtral && name.find(".block_sparse_moe.gate.") != std::string::npos) {
        renamed.replace(renamed.find("block_sparse_moe."), 17, "mlp.");
      }
      out[renamed] = t;
    }
  }
  for (int64_t i = 0; i < c["num_hidden_layers"].get<int64_t>(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    if (w.count(p + block + "experts.0." + (mixtral ? "w2" : "down_proj") + ".weight") == 0) continue;
    hf_test::StTensor gate_up, down;
    for (int64_t e = 0; e < num_experts; ++e) {
      const std::string x = p + block + "experts." + std::to_string(e) + ".";
      const auto& g = w.at(x + (mixtral ? "w1" : "gate_proj") + ".weight");
      const auto& u = w.at(x + (mixtral ? "w3" : "up_proj") + ".weight");
      const auto& d = w.at(x + (mixtral ? "w2" : "down_proj") + ".weight");
      gate_up.dtype = down.dtype = g.dtype;
      gate_up.shape = {num_experts, 2 * g.shape[0], g.shape[1]};
      down.shape = {num_experts, d.shape[0], d.shape[1]};
      gate_up.values.insert(gate_up.values.end(), g.values.begin(), g.values.end());
      gate_up.values.insert(gate_up.values.end(), u.values.begin(), u.values.end());
      down.values.insert(down.values.end(), d.values.begin(), d.values.end());
    }
    out[p + "mlp.experts.gate_up_proj"] = gate_up;
    out[p + "mlp.experts.down_proj"] = down;
  }
  return out;
}

TEST_CASE("the fused expert layout of transformers 5 imports to the same logits", "[hf]") {
  for (const std::string type : {"mixtral", "qwen2_moe", "olmoe"}) {
    TempDir tmp("hf_import_fused_" + type);
    const json c = hf_test::tiny_config(type);
    const hf_test::StMap w = hf_test::random_weights(c, "BF16", 13);
    hf_test::write_hf_dir(tmp.path / "hf", c, fuse_experts(w, c), false);
    REQUIRE(hf_test::read_raw(tmp.path / "hf" / "model.safetensors").count("model.layers.1.mlp.experts.gate_up_proj") == 1);
    require_close(engine_logits(tmp.str("hf"), tmp.str("run")), hf_test::reference_logits(w, c, k_tokens), 1e-4, 1e-4,
                  type + " fused logits");
  }
}

TEST_CASE("the imported config maps every HF field", "[hf]") {
  TempDir tmp("hf_import_config");
  json c = hf_test::tiny_config("qwen2_moe");
  hf_test::write_hf_dir(tmp.path / "hf", c, hf_test::random_weights(c, "BF16", 3), false);
  const HfImportResult r = import_hf(tmp.str("hf"), tmp.str("run"), 0);
  const Config& e = r.model.spec.config;
  CHECK(e.model.seq_len == 64);  // max_position_embeddings
  CHECK(e.model.rope_theta == 500000.0);
  CHECK(e.model.norm_eps == 1e-5);
  CHECK(e.model.num_kv_heads == 2);
  CHECK(!e.model.tie_embeddings);
  CHECK(e.moe.num_experts == 4);
  CHECK(e.moe.d_expert == 8);
  CHECK(e.moe.d_shared == 12);
  CHECK(e.moe.shared_gate);
  CHECK(!e.moe.renormalize);
  CHECK(e.moe.first_dense == 1);
  CHECK(r.model.dtype == HfDType::bf16);
  CHECK(fs::exists(tmp.path / "run" / "hf_config.json"));
  CHECK(resolve_checkpoint(tmp.str("run"), "latest") == r.checkpoint_dir);
  REQUIRE_THROWS_WITH(import_hf(tmp.str("hf"), tmp.str("run"), 0), Contains("exists and is not empty"));
}

// Writes a tiny `type` model with config.json edited by `edit` (and the weights by `edit_w`), imports, returns the error.
template <typename Edit, typename EditW>
std::string import_error(const std::string& type, Edit edit, EditW edit_w) {
  TempDir tmp("hf_import_err");
  json c = hf_test::tiny_config(type);
  hf_test::StMap w = hf_test::random_weights(c, "F32", 5);
  edit(c);
  edit_w(w);
  hf_test::write_hf_dir(tmp.path / "hf", c, w, false);
  try {
    import_hf(tmp.str("hf"), tmp.str("run"), 8);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

template <typename Edit>
std::string config_error(const std::string& type, Edit edit) {
  return import_error(type, edit, [](hf_test::StMap&) {});
}

TEST_CASE("what the engine cannot represent is refused naming the config.json field", "[hf]") {
  CHECK_THAT(config_error("llama", [](json& c) { c["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 8.0}}; }),
             Contains("'rope_scaling' asks for rope_type 'dynamic'"));
  CHECK_THAT(config_error("llama", [](json& c) { c["rope_parameters"] = {{"rope_type", "yarn"}}; }),
             Contains("'rope_parameters' asks for rope_type 'yarn'"));
  CHECK_THAT(config_error("llama", [](json& c) { c["rope_scaling"] = {{"rope_type", "linear"}}; }),
             Contains("'rope_scaling'.factor must be positive"));
  CHECK_THAT(config_error("llama", [](json& c) {
               c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"attention_factor", 0.5}};
             }),
             Contains("'rope_scaling'.attention_factor = 0.5"));
  CHECK_THAT(config_error("llama", [](json& c) {
               c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                    {"high_freq_factor", 4.0}};
             }),
             Contains("no 'original_max_position_embeddings'"));
  CHECK_THAT(config_error("mistral", [](json& c) { c["attention_bias"] = true; }), Contains("'attention_bias' is true"));
  CHECK_THAT(config_error("qwen2", [](json& c) { c["mlp_bias"] = true; }), Contains("'mlp_bias' is true"));
  CHECK_THAT(config_error("olmoe", [](json& c) { c["clip_qkv"] = 8.0; }), Contains("'clip_qkv' = 8.0"));
  CHECK_THAT(config_error("llama", [](json& c) { c["use_qk_norm"] = true; }), Contains("'use_qk_norm' is true"));
  CHECK_THAT(config_error("llama", [](json& c) { c["head_dim"] = 8; }), Contains("'head_dim' = 8"));
  CHECK_THAT(config_error("llama", [](json& c) { c["hidden_act"] = "gelu"; }), Contains("'hidden_act' = \"gelu\""));
  CHECK_THAT(config_error("llama", [](json& c) { c["partial_rotary_factor"] = 0.5; }),
             Contains("'partial_rotary_factor' = 0.5"));
  CHECK_THAT(config_error("mistral", [](json& c) { c["sliding_window"] = 4; }),
             Contains("'sliding_window' = 4 is shorter than model.seq_len = 8"));
  CHECK_THAT(config_error("qwen2", [](json& c) {
               c["use_sliding_window"] = true;
               c["sliding_window"] = 2;
             }),
             Contains("'sliding_window' = 2"));
  CHECK_THAT(config_error("mixtral", [](json& c) { c["router_jitter_noise"] = 0.1; }),
             Contains("'router_jitter_noise' = 0.1"));
  CHECK_THAT(config_error("qwen2_moe", [](json& c) { c["mlp_only_layers"] = {1}; }), Contains("'mlp_only_layers'"));
  CHECK_THAT(config_error("llama", [](json& c) { c["model_type"] = "olmoe"; }), Contains("no 'num_experts_per_tok'"));
  CHECK_THAT(config_error("llama", [](json& c) { c["model_type"] = "bert"; }),
             Contains("'model_type' = \"bert\" is not supported"));
  CHECK_THAT(config_error("llama", [](json& c) { c.erase("hidden_size"); }), Contains("no 'hidden_size'"));
  CHECK_THAT(config_error("llama", [](json& c) { c["vocab_size"] = "40"; }), Contains("'vocab_size' is not an integer"));
}

TEST_CASE("bad weights are refused naming the tensor", "[hf]") {
  const auto none = [](json&) {};
  CHECK_THAT(import_error("qwen2", none, [](hf_test::StMap& w) { w.erase("model.layers.1.self_attn.k_proj.bias"); }),
             Contains("no tensor 'model.layers.1.self_attn.k_proj.bias'"));
  CHECK_THAT(import_error("olmoe", none, [](hf_test::StMap& w) { w.erase("model.layers.0.self_attn.q_norm.weight"); }),
             Contains("no tensor 'model.layers.0.self_attn.q_norm.weight'"));
  CHECK_THAT(import_error("llama", none, [](hf_test::StMap& w) { w.erase("model.layers.1.mlp.up_proj.weight"); }),
             Contains("no tensor 'model.layers.1.mlp.up_proj.weight'"));
  CHECK_THAT(import_error("llama", none, [](hf_test::StMap& w) { w["model.extra.weight"] = w["model.norm.weight"]; }),
             Contains("'model.extra.weight' has no place"));
  CHECK_THAT(import_error("llama", none, [](hf_test::StMap& w) { w["model.norm.weight"].dtype = "F64"; }),
             Contains("has dtype F64"));
  CHECK_THAT(import_error("llama", [](json& c) { c["intermediate_size"] = 20; }, [](hf_test::StMap&) {}),
             Contains("config.json implies"));
  CHECK_THAT(import_error("llama", [](json& c) { c["tie_word_embeddings"] = true; }, [](hf_test::StMap&) {}),
             Contains("lm_head.weight differs from model.embed_tokens.weight"));
}

TEST_CASE("what GPT-2 import cannot represent is refused naming the config.json field", "[hf]") {
  auto gpt2_error = [](auto edit, int64_t seq_len = 0) {
    TempDir tmp("hf_import_gpt2_err");
    json c = hf_test::tiny_gpt2_config();
    hf_test::StMap w = hf_test::random_gpt2_weights(c, "F32", 5);
    edit(c, w);
    hf_test::write_hf_dir(tmp.path / "hf", c, w, false);
    try {
      import_hf(tmp.str("hf"), tmp.str("run"), seq_len);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  using W = hf_test::StMap;
  CHECK_THAT(gpt2_error([](json& c, W&) { c["activation_function"] = "gelu"; }),
             Contains("'activation_function' = \"gelu\""));
  CHECK_THAT(gpt2_error([](json& c, W&) { c["scale_attn_by_inverse_layer_idx"] = true; }),
             Contains("'scale_attn_by_inverse_layer_idx' is true"));
  CHECK_THAT(gpt2_error([](json&, W&) {}, 4), Contains("'n_positions' = 8 but model.seq_len = 4"));
  CHECK_THAT(gpt2_error([](json&, W& w) { w.erase("transformer.h.1.mlp.c_fc.bias"); }),
             Contains("no tensor 'transformer.h.1.mlp.c_fc.bias'"));
  CHECK_THAT(gpt2_error([](json&, W& w) { w["transformer.h.0.attn.c_attn.bias"].shape = {47}; }),
             Contains("'transformer.h.0.attn.c_attn.bias'"));
}

TEST_CASE("a sharded index naming a missing shard is refused", "[hf]") {
  TempDir tmp("hf_import_shard");
  json c = hf_test::tiny_config("llama");
  hf_test::write_hf_dir(tmp.path / "hf", c, hf_test::random_weights(c, "F32", 2), true);
  fs::remove(tmp.path / "hf" / "model-00002-of-00002.safetensors");
  REQUIRE_THROWS_WITH(import_hf(tmp.str("hf"), tmp.str("run"), 8),
                      Contains("lists shard 'model-00002-of-00002.safetensors', which does not exist"));
}

TEST_CASE("f16 <-> f32 conversion rounds to nearest even and keeps subnormals", "[hf]") {
  CHECK(f32_to_f16_bits(1.0f) == 0x3c00);
  CHECK(f32_to_f16_bits(-2.0f) == 0xc000);
  CHECK(f32_to_f16_bits(65504.0f) == 0x7bff);
  CHECK(f32_to_f16_bits(1e6f) == 0x7c00);
  CHECK(f32_to_f16_bits(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(f32_to_f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);                             // tie -> even
  CHECK(f32_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);                         // tie -> even
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // nan payloads
    REQUIRE(f32_to_f16_bits(f16_bits_to_f32(h)) == h);
  }
}

}  // namespace
}  // namespace moe

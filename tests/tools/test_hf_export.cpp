// `moe convert --to-hf` and `moe upcycle --from-hf`: import -> export is bit-exact (tensors and
// config fields) for every family and dtype; engine runs export and re-import to the same weights;
// what a family cannot express is refused naming the engine key; upcycling an HF dense model
// (every mode) and the `moe` binary end to end (convert, eval, train --resume, export).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <sstream>

#include "src/model/model.h"
#include "src/tools/hf_export.h"
#include "src/tools/hf_import.h"
#include "src/train/checkpoint.h"
#include "src/train/optimizer.h"
#include "tests/test_util.h"
#include "tests/tools/hf_test_gpt2.h"
#include "tests/tools/hf_test_util.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
using test::TempDir;
namespace fs = std::filesystem;
using hf_test::json;

std::map<std::string, hf_test::RawTensor> raw_dir(const fs::path& dir) {
  std::map<std::string, hf_test::RawTensor> all;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") all.merge(hf_test::read_raw(entry.path()));
  }
  return all;
}

void check_round_trip(const std::string& type, const std::string& dtype, bool sharded, bool tied = false,
                      json c = json()) {
  INFO(type << " " << dtype << (sharded ? " sharded" : "") << (tied ? " tied" : ""));
  TempDir tmp("hf_round_trip");
  if (c.is_null()) c = type == "gpt2" ? hf_test::tiny_gpt2_config() : hf_test::tiny_config(type);
  c["tie_word_embeddings"] = tied;
  c["torch_dtype"] = dtype == "F32" ? "float32" : dtype == "BF16" ? "bfloat16" : "float16";
  hf_test::write_hf_dir(tmp.path / "hf", c,
                        type == "gpt2" ? hf_test::random_gpt2_weights(c, dtype, 21) : hf_test::random_weights(c, dtype, 21),
                        sharded);
  import_hf(tmp.str("hf"), tmp.str("run"), 8);
  const HfExportResult r = export_hf(tmp.str("run"), tmp.str("out"), {});
  CHECK(hf_family_name(r.family) == type);
  const auto src = raw_dir(tmp.path / "hf"), out = raw_dir(tmp.path / "out");
  REQUIRE(src.size() == out.size());
  for (const auto& [name, t] : src) {
    INFO(name);
    REQUIRE(out.count(name) == 1);
    CHECK(out.at(name) == t);  // dtype, shape and every byte
  }
  std::ifstream in(tmp.path / "out" / "config.json");
  const json exported = json::parse(in);
  for (const auto& [key, value] : c.items()) {
    INFO(key);
    CHECK(exported.at(key) == value);
  }
}

TEST_CASE("import -> export is bit-exact for every family, dtype and file layout", "[hf]") {
  check_round_trip("llama", "BF16", false);
  check_round_trip("llama", "F16", true);
  check_round_trip("llama", "F32", false, true);
  check_round_trip("mistral", "F32", false);
  check_round_trip("qwen2", "BF16", true);
  check_round_trip("mixtral", "F16", false);
  check_round_trip("qwen2_moe", "BF16", true);
  check_round_trip("olmoe", "BF16", false);
  check_round_trip("gpt2", "F32", false, true);
  check_round_trip("gpt2", "BF16", true, false);
  json llama = hf_test::tiny_config("llama");
  llama["attention_bias"] = true;
  llama["mlp_bias"] = true;
  llama["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  check_round_trip("llama", "BF16", false, false, llama);
  json mistral = hf_test::tiny_config("mistral");  // transformers 5: rope_parameters
  mistral["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 500000.0}};
  check_round_trip("mistral", "F32", false, false, mistral);
}

Config engine_config(bool shared) {
  Config c;
  c.model.vocab_size = 40;
  c.model.d_model = 16;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 8;
  c.model.d_ff = 24;
  c.model.tie_embeddings = false;
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.d_expert = 8;
  c.moe.router = "softmax_topk";
  if (shared) {
    c.moe.num_shared_experts = 1;
    c.moe.d_shared = 12;
    c.moe.shared_gate = true;
    c.moe.first_dense = 1;
  }
  c.train.device = "cpu";
  validate_config(c);
  return c;
}

// A checkpoint of this engine (random initialisation) at dir/checkpoints/step_0.
std::string write_engine_run(const Config& c, const fs::path& dir) {
  Model m(c.model, c.moe);
  m.allocate(Device::cpu(), DType::f32);
  m.initialize(17);
  fs::create_directories(dir / "checkpoints");
  const std::string ckpt = (dir / "checkpoints" / "step_0").string();
  AdamW opt(m.params(), c.optim);
  write_checkpoint(ckpt, m.params(), opt, TrainerState{0, 1, 1, nullptr}, c);
  return ckpt;
}

TEST_CASE("an engine run exports to mixtral / qwen2_moe and re-imports to the same weights", "[hf]") {
  for (bool shared : {false, true}) {
    TempDir tmp("hf_export_engine");
    Config c = engine_config(shared);
    if (!shared) c.model.d_ff = c.moe.d_expert;  // Mixtral's intermediate_size is the expert width (no dense layer)
    const std::string ckpt = write_engine_run(c, tmp.path / "run");
    const HfExportResult r = export_hf(tmp.str("run"), tmp.str("out"), {});
    CHECK(r.family == (shared ? HfFamily::qwen2_moe : HfFamily::mixtral));
    CHECK(r.dtype == HfDType::f32);
    const HfModel back = read_hf_model(tmp.str("out"), 8, "x");
    Config got = c;
    got.model = back.spec.config.model;
    // Qwen2-MoE always has q/k/v biases: a run without them exports zeros, which import reads back.
    CHECK(got.model.attention_bias == (shared ? "qkv" : "none"));
    got.model.attention_bias = c.model.attention_bias;
    for (const ConfigChange& change : config_changes(c, got)) FAIL_CHECK(change.key << ": " << change.before << " -> " << change.after);
    CHECK(back.spec.config.moe.num_experts == 4);
    CHECK(back.spec.config.moe.num_shared_experts == (shared ? 1 : 0));
    const SafetensorsFile original = read_safetensors(fs::path(ckpt) / "model.safetensors");
    REQUIRE(original.tensors.size() + (shared ? 3 * c.model.num_layers : 0) == back.weights.size());
    for (const auto& [name, t] : back.weights) {
      INFO(name);
      auto it = original.tensors.find(name);
      if (it == original.tensors.end()) {
        CHECK((name.ends_with(".attn.bq") || name.ends_with(".attn.bk") || name.ends_with(".attn.bv")));
        for (float v : t.to_vector<float>()) CHECK(v == 0.0f);
        continue;
      }
      CHECK(t.to_vector<float>() == it->second.to_vector<float>());
    }
  }
}

TEST_CASE("export in bf16 rounds each f32 master weight to nearest even", "[hf]") {
  TempDir tmp("hf_export_bf16");
  const Config c = engine_config(false);
  const std::string ckpt = write_engine_run(c, tmp.path / "run");
  export_hf(ckpt, tmp.str("out"), {"", "bfloat16"});
  const auto raw = hf_test::read_raw(tmp.path / "out" / "model.safetensors");
  const auto& norm = raw.at("model.norm.weight");
  CHECK(norm.dtype == "BF16");
  const std::vector<float> master = read_safetensors(fs::path(ckpt) / "model.safetensors").tensors.at("final_norm.weight").to_vector<float>();
  for (size_t i = 0; i < master.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, norm.bytes.data() + 2 * i, 2);
    CHECK(bits == f32_to_bf16_bits(master[i]));
  }
}

TEST_CASE("an engine run with rope scaling and biases exports the config.json transformers reads", "[hf]") {
  TempDir tmp("hf_export_rope");
  Config c = engine_config(false);
  c.moe.num_experts = 0;
  c.model.rope_scaling = "llama3";
  c.model.rope_factor = 8.0;
  c.model.rope_original_max_positions = 64;
  c.model.attention_bias = "all";
  c.model.ffn_bias = true;
  validate_config(c);
  write_engine_run(c, tmp.path / "run");
  const HfExportResult r = export_hf(tmp.str("run"), tmp.str("out"), {});
  CHECK(r.family == HfFamily::llama);
  std::ifstream in(tmp.path / "out" / "config.json");
  const json exported = json::parse(in);
  CHECK(exported["rope_scaling"] == json({{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}));
  CHECK(exported["attention_bias"] == true);
  CHECK(exported["mlp_bias"] == true);
  const HfModel back = read_hf_model(tmp.str("out"), 8, "x");
  CHECK(back.spec.config.model == c.model);
  CHECK(hf_test::read_raw(tmp.path / "out" / "model.safetensors").count("model.layers.1.mlp.gate_proj.bias") == 1);
}

template <typename Edit>
std::string export_error(Edit edit, const std::string& arch = "") {
  TempDir tmp("hf_export_err");
  Config c = engine_config(false);
  edit(c);
  validate_config(c);
  write_engine_run(c, tmp.path / "run");
  try {
    export_hf(tmp.str("run"), tmp.str("out"), {arch, ""});
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

TEST_CASE("what the target cannot express is refused naming the engine key", "[hf]") {
  CHECK_THAT(export_error([](Config& c) {
               c.moe.router = "hash";
               c.moe.hash_kind = "random";
             }),
             Contains("moe.router = \"hash\" cannot be exported"));
  CHECK_THAT(export_error([](Config& c) {
               c.moe.router = "expert_choice";
               c.moe.capacity_factor = 1.0;
             }),
             Contains("moe.router = \"expert_choice\" cannot be exported"));
  CHECK_THAT(export_error([](Config& c) {
               c.moe.num_shared_experts = 1;
               c.moe.d_shared = 8;
             }, "mixtral"),
             Contains("moe.num_shared_experts = 1 cannot be exported: Mixtral has no shared experts"));
  CHECK_THAT(export_error([](Config& c) {
               c.moe.num_shared_experts = 1;
               c.moe.d_shared = 8;
             }),
             Contains("Qwen2-MoE has exactly one shared expert with a sigmoid gate"));
  CHECK_THAT(export_error([](Config& c) { c.moe.capacity_factor = 1.25; }), Contains("moe.capacity_factor = 1.25"));
  CHECK_THAT(export_error([](Config& c) { c.moe.expert_bias_rate = 0.001; }), Contains("moe.expert_bias_rate"));
  CHECK_THAT(export_error([](Config& c) { c.moe.renormalize = false; }), Contains("moe.renormalize = false"));
  CHECK_THAT(export_error([](Config& c) { c.moe.first_dense = 1; }), Contains("every Mixtral layer is MoE"));
  CHECK_THAT(export_error([](Config& c) { c.model.norm = "layernorm"; }), Contains("model.norm = \"layernorm\""));
  CHECK_THAT(export_error([](Config& c) { c.model.positions = "learned"; }), Contains("model.positions = \"learned\""));
  CHECK_THAT(export_error([](Config& c) { c.model.activation = "gelu"; }), Contains("model.activation = \"gelu\""));
  CHECK_THAT(export_error([](Config&) {}, "llama"), Contains("an MoE run cannot be exported as a dense model"));
  CHECK_THAT(export_error([](Config& c) { c.moe.num_experts = 0; }, "mixtral"),
             Contains("a dense run cannot be exported as an MoE model"));
  CHECK_THAT(export_error([](Config&) {}, "gpt2"), Contains("cannot be exported to gpt2"));
  const auto dense = [](auto edit) {
    return [edit](Config& c) {
      c.moe.num_experts = 0;
      edit(c);
    };
  };
  CHECK_THAT(export_error(dense([](Config& c) { c.model.attention_bias = "qkv"; }), "llama"),
             Contains("model.attention_bias = \"qkv\" cannot be exported"));
  CHECK_THAT(export_error(dense([](Config& c) { c.model.attention_bias = "all"; }), "qwen2"),
             Contains("model.attention_bias = \"all\" cannot be exported: the target has q/k/v biases only"));
  CHECK_THAT(export_error(dense([](Config& c) { c.model.ffn_bias = true; }), "mistral"),
             Contains("model.ffn_bias = true cannot be exported"));
  CHECK_THAT(export_error(dense([](Config& c) { c.model.qk_norm = true; }), "llama"),
             Contains("model.qk_norm = true cannot be exported"));
  CHECK_THAT(export_error([](Config&) {}, "olmoe"), Contains("model.qk_norm = false cannot be exported: OLMoE always"));
}

// The dense reference of tests/tools/hf_test_util.h against an upcycled MoE (copy mode keeps it).
TEST_CASE("upcycle --from-hf builds the MoE from an HF dense model in every mode", "[hf][upcycle]") {
  TempDir tmp("hf_upcycle");
  const json c = hf_test::tiny_config("llama");
  const hf_test::StMap w = hf_test::random_weights(c, "BF16", 8);
  hf_test::write_hf_dir(tmp.path / "hf", c, w, true);
  Config target = read_hf_model(tmp.str("hf"), 8, "x").spec.config;
  target.moe.num_experts = 4;
  target.moe.top_k = 2;
  target.moe.d_expert = 24;
  target.moe.router = "softmax_topk";
  target.moe.renormalize = true;
  target.train.device = "cpu";
  validate_config(target);
  const UpcycleResult r = upcycle_from_hf(tmp.str("hf"), target, tmp.str("copy"), UpcycleOptions{});
  CHECK(r.layers.size() == 2);
  Model m(target.model, target.moe);
  m.allocate(Device::cpu(), DType::f32);
  read_checkpoint(tmp.str("copy"), m.params(), nullptr);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 30, 31, 32, 33};
  test::require_close(m.logits(tokens, 1).to_vector<double>(), hf_test::reference_logits(w, c, tokens), 1e-4, 1e-4,
                      "upcycled logits");
  Config fine = target;
  fine.moe.d_expert = 8;
  fine.moe.num_experts = 6;
  fine.moe.top_k = 3;
  validate_config(fine);
  CHECK(upcycle_from_hf(tmp.str("hf"), fine, tmp.str("fine"), {UpcycleMode::fine_grained, 0.5, 3}).layers[0].groups == 3);
  Config partial = target;
  partial.moe.d_expert = 12;
  partial.moe.num_shared_experts = 1;
  validate_config(partial);
  CHECK(upcycle_from_hf(tmp.str("hf"), partial, tmp.str("partial"), {UpcycleMode::partial_reinit, 0.5, 3})
            .layers[0].reinit_entries > 0);
  Config other = target;
  other.model.rope_theta = 10000.0;
  REQUIRE_THROWS_WITH(upcycle_from_hf(tmp.str("hf"), other, tmp.str("other"), UpcycleOptions{}),
                      Contains("model.rope_theta = 10000.0 in the target config, but"));
  hf_test::write_hf_dir(tmp.path / "moe_hf", hf_test::tiny_config("mixtral"),
                        hf_test::random_weights(hf_test::tiny_config("mixtral"), "F32", 1), false);
  REQUIRE_THROWS_WITH(upcycle_from_hf(tmp.str("moe_hf"), target, tmp.str("other"), UpcycleOptions{}),
                      Contains("is a mixtral model, not a dense one"));
}

std::string run_binary(const std::string& args, const std::string& log, int* status) {
  const std::string cmd = std::string(std::getenv("MOE_BINARY")) + " " + args + " > " + log + " 2>&1";
  *status = std::system(cmd.c_str());
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_CASE("moe convert end to end: import, eval, train --resume, export", "[hf][cli]") {
  TempDir tmp("hf_cli");
  const json c = hf_test::tiny_config("mixtral");
  const hf_test::StMap w = hf_test::random_weights(c, "BF16", 4);
  hf_test::write_hf_dir(tmp.path / "hf", c, w, true);
  test::write_pattern_shard(tmp.str("train.tok"), 2000, 40, 1);
  test::write_pattern_shard(tmp.str("val.tok"), 400, 40, 2);
  const std::string log = tmp.str("log.txt"), run = tmp.str("run");
  int status = 0;
  const std::string data = " --set data.train_path=" + tmp.str("train.tok") + " --set data.val_path=" +
                           tmp.str("val.tok") + " --set train.device=cpu --set train.micro_batch_size=2";
  std::string out = run_binary("convert --from-hf " + tmp.str("hf") + " --out " + tmp.str("bad") + " --set model.d_ff=8",
                               log, &status);
  CHECK(status != 0);
  CHECK_THAT(out, Contains("convert --set model.d_ff: the model comes from"));
  out = run_binary("convert --from-hf " + tmp.str("hf") + " --out " + run + " --seq-len 8" + data, log, &status);
  INFO(out);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("(mixtral, bfloat16)"));
  out = run_binary("logits " + run + " --tokens 5,0,39,12,7 --out " + tmp.str("logits.json"), log, &status);
  REQUIRE(status == 0);
  std::ifstream logits_file(tmp.str("logits.json"));
  const json dumped = json::parse(logits_file);
  std::vector<double> got;
  for (const auto& row : dumped["logits"]) got.insert(got.end(), row.begin(), row.end());
  test::require_close(got, hf_test::reference_logits(w, c, {5, 0, 39, 12, 7}), 1e-4, 1e-4, "moe logits");
  out = run_binary("logits " + run + " --tokens 5,40", log, &status);
  CHECK(status != 0);
  CHECK_THAT(out, Contains("token 40 is outside the vocabulary [0, 40)"));
  out = run_binary("eval " + run + "/config.toml --batches 2", log, &status);
  INFO(out);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("val_loss"));
  out = run_binary("train " + run + "/config.toml --set train.steps=2 --set train.eval_every=0", log, &status);
  INFO(out);
  REQUIRE(status == 0);
  REQUIRE(fs::exists(tmp.path / "run" / "checkpoints" / "step_2"));
  out = run_binary("convert --to-hf " + run + " --out " + tmp.str("out"), log, &status);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("step_2"));
  CHECK(hf_test::read_raw(tmp.path / "out" / "model.safetensors").at("model.norm.weight").dtype == "BF16");
  out = run_binary("convert --out " + tmp.str("x"), log, &status);
  CHECK(status != 0);
  CHECK_THAT(out, Contains("exactly one of --from-hf DIR and --to-hf RUN_DIR"));
}

}  // namespace
}  // namespace moe

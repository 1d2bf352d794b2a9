// Hugging Face architectures the engine represents (Llama, Mistral, Qwen2, GPT-2 dense; Mixtral,
// Qwen2-MoE, OLMoE): config.json <-> Config, and where each engine parameter's values sit in HF tensors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/tools/hf_tensors.h"

namespace moe {

enum class HfFamily { llama, mistral, qwen2, mixtral, qwen2_moe, olmoe, gpt2 };
HfFamily hf_family_from_name(const std::string& model_type);  // refuses the rest naming model_type
const char* hf_family_name(HfFamily family);                  // the config.json model_type
bool hf_family_is_moe(HfFamily family);

// An imported architecture: the engine config and what else the HF checkpoint must hold.
struct HfModelSpec {
  HfFamily family = HfFamily::llama;
  Config config;
};

// config.json -> the engine's [model] and [moe] (the rest default, train.run_dir = run_dir).
// seq_len: model.seq_len (0 = min(max_position_embeddings, 4096)). Refuses, naming the
// config.json field, what the engine cannot represent (rope_scaling, attention_bias, mlp_bias,
// head_dim, hidden_act, sliding windows, router jitter, mlp_only_layers, ...).
HfModelSpec hf_spec_from_config(const nlohmann::json& hf, int64_t seq_len, const std::string& run_dir);

// The config.json transformers loads for `config` as `family`; keys of `base` (the imported
// config.json, or null) that the engine does not own are kept. Refuses, naming the engine key,
// what the family cannot express (a hash router, expert choice, capacity dropping, ...).
nlohmann::json hf_config_from_engine(const Config& config, HfFamily family, const nlohmann::json& base,
                                     const std::string& torch_dtype);
// The family a run exports to by default: base's model_type when given, else llama for a dense
// model (gpt2 with learned positions), qwen2_moe with shared experts, mixtral without.
HfFamily default_export_family(const Config& config, const nlohmann::json& base);

// Where an engine parameter's values are in the HF checkpoint: the engine tensor is
// [slices..., rows, cols] with one slice per entry of `slices` (experts; a single entry and no
// slice dimension when stacked is false); each slice is the HF tensors of its entry placed side
// by side along the columns, each transposed first when transpose is set (nn.Linear keeps
// [out, in]; the engine keeps [in, out]).
struct HfTensorMap {
  std::string engine;
  std::vector<std::vector<std::string>> slices;
  bool stacked = false, transpose = true;
};
// One map per parameter of the model described by config (tensor-parallel and pipeline
// splits aside), in the Model's naming.
std::vector<HfTensorMap> hf_tensor_maps(const Config& config, HfFamily family);
// The zero-valued extra tensors `family` carries for `config` (Qwen2's attention biases of a run
// without them).
std::vector<std::string> hf_zero_tensors(const Config& config, HfFamily family);

// config.json fields, read with an error naming the key (missing, or of the wrong type); the _or
// forms give `fallback` for a missing or null key.
const nlohmann::json& hf_field(const nlohmann::json& hf, const std::string& key);
int64_t hf_int_field(const nlohmann::json& hf, const std::string& key);
int64_t hf_int_field_or(const nlohmann::json& hf, const std::string& key, int64_t fallback);
double hf_number_field_or(const nlohmann::json& hf, const std::string& key, double fallback);
bool hf_bool_field_or(const nlohmann::json& hf, const std::string& key, bool fallback);

// GPT-2 (src/tools/hf_gpt2.cpp): config.json (n_embd, n_layer, n_head, n_positions, n_inner,
// activation_function, layer_norm_epsilon) <-> the engine's [model], and its tensor maps (Conv1D
// weights are [in, out] like the engine's: no transpose).
void read_gpt2_config(const nlohmann::json& hf, ModelConfig& m, int64_t seq_len);
void write_gpt2_config(const Config& config, nlohmann::json& out);
std::vector<HfTensorMap> hf_gpt2_tensor_maps(const Config& config);
// Checkpoint names <-> the maps' names: import drops the "transformer." prefix's absence (older
// checkpoints), the attention mask buffers (attn.bias, attn.masked_bias) and cuts the fused
// attn.c_attn.{weight,bias} [d, 3d] / [3d] into q, k, v parts; export joins them back.
void gpt2_unfuse_qkv(std::map<std::string, HfTensor>& hf);
void gpt2_fuse_qkv(std::map<std::string, HfTensor>& hf);

}  // namespace moe

// GPT-2 (model_type gpt2) for the HF converter: config.json <-> [model], the tensor map, and the
// fused attn.c_attn [d, 3d] cut into q, k, v on import and joined back on export.
#include <cstring>

#include "src/tools/hf_arch.h"
#include "src/util/check.h"

namespace moe {

namespace {

using nlohmann::json;

// The maps' names for the three parts of c_attn ("#" cannot occur in a checkpoint's names).
const char* const k_qkv_parts[] = {"q", "k", "v"};
std::string part_name(const std::string& fused, int part) { return fused + "#" + k_qkv_parts[part]; }

std::string block(int64_t i) { return "transformer.h." + std::to_string(i) + "."; }

}  // namespace

void read_gpt2_config(const json& hf, ModelConfig& m, int64_t seq_len) {
  m.vocab_size = hf_int_field(hf, "vocab_size");
  m.d_model = hf_int_field(hf, "n_embd");
  m.num_layers = hf_int_field(hf, "n_layer");
  m.num_heads = m.num_kv_heads = hf_int_field(hf, "n_head");
  const int64_t positions = hf_int_field(hf, "n_positions");
  MOE_CHECK(seq_len <= 0 || seq_len == positions, "config.json: 'n_positions' = ", positions, " but model.seq_len = ",
            seq_len, ": the engine's learned position table has model.seq_len rows (convert without --seq-len)");
  m.seq_len = positions;
  m.positions = "learned";
  m.norm = "layernorm";
  m.norm_eps = hf_number_field_or(hf, "layer_norm_epsilon", 1e-5);
  const std::string act = hf.value("activation_function", std::string("gelu_new"));
  MOE_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh", "config.json: 'activation_function' = \"", act,
            "\": the engine's GELU is the tanh approximation (gelu_new, gelu_pytorch_tanh)");
  m.activation = "gelu";
  m.d_ff = hf_int_field_or(hf, "n_inner", 4 * m.d_model);
  m.attention_bias = "all";
  m.ffn_bias = true;
  m.tie_embeddings = hf_bool_field_or(hf, "tie_word_embeddings", true);
  m.init_std = hf_number_field_or(hf, "initializer_range", 0.02);
  MOE_CHECK(hf_bool_field_or(hf, "scale_attn_weights", true), "config.json: 'scale_attn_weights' is false: the "
            "engine scales attention logits by 1/sqrt(head_dim)");
  MOE_CHECK(!hf_bool_field_or(hf, "scale_attn_by_inverse_layer_idx", false), "config.json: "
            "'scale_attn_by_inverse_layer_idx' is true: the engine's attention scale is the same in every layer");
}

void write_gpt2_config(const Config& c, json& out) {
  const ModelConfig& m = c.model;
  MOE_CHECK(m.norm == "layernorm" && m.positions == "learned" && m.activation == "gelu" && m.attention_bias == "all" &&
                m.ffn_bias && m.num_kv_heads == m.num_heads && !m.qk_norm && c.moe.num_experts == 0,
            "model.norm = \"", m.norm, "\", positions = \"", m.positions, "\", activation = \"", m.activation,
            "\", attention_bias = \"", m.attention_bias, "\", ffn_bias = ", m.ffn_bias ? "true" : "false",
            ", num_kv_heads = ", m.num_kv_heads, ", qk_norm = ", m.qk_norm ? "true" : "false",
            " cannot be exported to gpt2 (it needs layernorm, learned positions, gelu, attention_bias = \"all\", "
            "ffn_bias = true, no grouped-query heads, no QK-norm, a dense model)");
  out["vocab_size"] = m.vocab_size;
  out["n_embd"] = m.d_model;
  out["n_layer"] = m.num_layers;
  out["n_head"] = m.num_heads;
  out["n_positions"] = m.seq_len;
  if (!out.contains("n_ctx")) out["n_ctx"] = m.seq_len;
  const bool default_inner = m.d_ff == 4 * m.d_model && out.contains("n_inner") && out["n_inner"].is_null();
  out["n_inner"] = default_inner ? json(nullptr) : json(m.d_ff);  // an imported null stays null
  if (!out.contains("activation_function")) out["activation_function"] = "gelu_new";
  out["layer_norm_epsilon"] = m.norm_eps;
  out["initializer_range"] = m.init_std;
  out["tie_word_embeddings"] = m.tie_embeddings;
  out["scale_attn_weights"] = true;
  out["scale_attn_by_inverse_layer_idx"] = false;
}

std::vector<HfTensorMap> hf_gpt2_tensor_maps(const Config& c) {
  std::vector<HfTensorMap> maps;
  auto plain = [&](const std::string& engine, const std::string& hf) { maps.push_back({engine, {{hf}}, false, false}); };
  plain("embed.tokens", "transformer.wte.weight");
  plain("embed.positions", "transformer.wpe.weight");
  for (int64_t i = 0; i < c.model.num_layers; ++i) {
    const std::string e = "layers." + std::to_string(i) + ".", h = block(i);
    for (const char* w : {"weight", "bias"}) {
      plain(e + "attn_norm." + w, h + "ln_1." + w);
      plain(e + "ffn_norm." + w, h + "ln_2." + w);
    }
    for (int p = 0; p < 3; ++p) {
      plain(e + "attn.w" + k_qkv_parts[p], part_name(h + "attn.c_attn.weight", p));
      plain(e + "attn.b" + k_qkv_parts[p], part_name(h + "attn.c_attn.bias", p));
    }
    plain(e + "attn.wo", h + "attn.c_proj.weight");
    plain(e + "attn.bo", h + "attn.c_proj.bias");
    plain(e + "ffn.w_up", h + "mlp.c_fc.weight");
    plain(e + "ffn.b_up", h + "mlp.c_fc.bias");
    plain(e + "ffn.w_down", h + "mlp.c_proj.weight");
    plain(e + "ffn.b_down", h + "mlp.c_proj.bias");
  }
  plain("final_norm.weight", "transformer.ln_f.weight");
  plain("final_norm.bias", "transformer.ln_f.bias");
  if (!c.model.tie_embeddings) maps.push_back({"lm_head.weight", {{"lm_head.weight"}}, false, true});
  return maps;
}

void gpt2_unfuse_qkv(std::map<std::string, HfTensor>& hf) {
  std::map<std::string, HfTensor> out;
  for (auto& [name, t] : hf) {
    std::string n = name.starts_with("transformer.") || name.starts_with("lm_head.") ? name : "transformer." + name;
    if (n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias")) continue;  // causal-mask buffers
    if (!n.ends_with(".attn.c_attn.weight") && !n.ends_with(".attn.c_attn.bias")) {
      out[n] = std::move(t);
      continue;
    }
    MOE_CHECK(!t.shape.empty() && t.shape.size() <= 2 && t.shape.back() % 3 == 0, "Hugging Face tensor '", name,
              "' is not [..., 3 * n_embd] (q, k, v side by side)");
    const int64_t cols = t.shape.back(), rows = static_cast<int64_t>(t.values.size()) / cols;
    for (int p = 0; p < 3; ++p) {
      HfTensor part{t.shape, t.dtype, {}};
      part.shape.back() = cols / 3;
      for (int64_t r = 0; r < rows; ++r) {
        const auto begin = t.values.begin() + r * cols + p * (cols / 3);
        part.values.insert(part.values.end(), begin, begin + cols / 3);
      }
      out[part_name(n, p)] = std::move(part);
    }
  }
  hf = std::move(out);
}

void gpt2_fuse_qkv(std::map<std::string, HfTensor>& hf) {
  std::vector<std::string> fused;
  for (const auto& [name, t] : hf) {
    if (name.ends_with("#q")) fused.push_back(name.substr(0, name.size() - 2));
  }
  for (const std::string& name : fused) {
    const HfTensor* parts[3];
    for (int p = 0; p < 3; ++p) parts[p] = &hf.at(part_name(name, p));
    const int64_t cols = parts[0]->shape.back(), rows = static_cast<int64_t>(parts[0]->values.size()) / cols;
    HfTensor t{parts[0]->shape, parts[0]->dtype, {}};
    t.shape.back() = 3 * cols;
    for (int64_t r = 0; r < rows; ++r) {
      for (int p = 0; p < 3; ++p) {
        const auto begin = parts[p]->values.begin() + r * cols;
        t.values.insert(t.values.end(), begin, begin + cols);
      }
    }
    for (int p = 0; p < 3; ++p) hf.erase(part_name(name, p));
    hf[name] = std::move(t);
  }
}

}  // namespace moe

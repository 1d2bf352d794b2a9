// config.json <-> Config for the HF families the engine represents, and the tensor name map:
// model.layers.<i>.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, Mixtral's
// block_sparse_moe.experts.<j>.w{1,2,3}, Qwen2-MoE's mlp.experts.<j>.* and mlp.shared_expert*.
#include "src/tools/hf_arch.h"

#include <algorithm>
#include <cmath>

#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/model/model.h"
#include "src/util/check.h"

namespace moe {

using nlohmann::json;

const json& hf_field(const json& hf, const std::string& key) {
  MOE_CHECK(hf.contains(key) && !hf[key].is_null(), "config.json has no '", key, "'");
  return hf[key];
}

int64_t hf_int_field(const json& hf, const std::string& key) {
  const json& v = hf_field(hf, key);
  MOE_CHECK(v.is_number_integer(), "config.json: '", key, "' is not an integer (", v.dump(), ")");
  return v.get<int64_t>();
}

int64_t hf_int_field_or(const json& hf, const std::string& key, int64_t fallback) {
  return hf.contains(key) && !hf[key].is_null() ? hf_int_field(hf, key) : fallback;
}

double hf_number_field_or(const json& hf, const std::string& key, double fallback) {
  if (!hf.contains(key) || hf[key].is_null()) return fallback;
  MOE_CHECK(hf[key].is_number(), "config.json: '", key, "' is not a number (", hf[key].dump(), ")");
  return hf[key].get<double>();
}

bool hf_bool_field_or(const json& hf, const std::string& key, bool fallback) {
  if (!hf.contains(key) || hf[key].is_null()) return fallback;
  MOE_CHECK(hf[key].is_boolean(), "config.json: '", key, "' is not true or false (", hf[key].dump(), ")");
  return hf[key].get<bool>();
}

namespace {

// rope_scaling (transformers 4) or rope_parameters (transformers 5): rope_type default, linear
// (factor) or llama3 (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
// into the model's rope keys; any other type is refused naming the field.
void read_rope_scaling(const json& hf, ModelConfig& m) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!hf.contains(key) || hf[key].is_null()) continue;
    const json& r = hf[key];
    MOE_CHECK(r.is_object(), "config.json: '", key, "' is not an object");
    const std::string type = r.value("rope_type", r.value("type", std::string("default")));
    MOE_CHECK(type == "default" || type == "linear" || type == "llama3", "config.json: '", key,
              "' asks for rope_type '", type, "': the engine scales rotary positions only as default, linear or llama3");
    const double attention_factor = hf_number_field_or(r, "attention_factor", 1.0);
    MOE_CHECK(attention_factor == 1.0, "config.json: '", key, "'.attention_factor = ", attention_factor,
              ": the engine does not scale attention logits for rope scaling");
    if (type == "default") continue;
    m.rope_scaling = type;
    m.rope_factor = hf_number_field_or(r, "factor", 0.0);
    MOE_CHECK(m.rope_factor > 0, "config.json: '", key, "'.factor must be positive for rope_type '", type, "'");
    if (type == "llama3") {
      m.rope_low_freq_factor = hf_number_field_or(r, "low_freq_factor", 0.0);
      m.rope_high_freq_factor = hf_number_field_or(r, "high_freq_factor", 0.0);
      m.rope_original_max_positions = hf_int_field(r, "original_max_position_embeddings");
    }
  }
}

// rope_theta at the top level (transformers 4) or in rope_parameters (transformers 5).
double rope_theta(const json& hf) {
  double theta = hf_number_field_or(hf, "rope_theta", 10000.0);
  if (hf.contains("rope_parameters") && hf["rope_parameters"].is_object()) {
    theta = hf_number_field_or(hf["rope_parameters"], "rope_theta", theta);
  }
  const double partial = hf_number_field_or(hf, "partial_rotary_factor", 1.0);
  MOE_CHECK(partial == 1.0, "config.json: 'partial_rotary_factor' = ", partial,
            ": the engine rotates every dimension of a head");
  return theta;
}

void refuse_true(const json& hf, const std::string& key, const std::string& why) {
  MOE_CHECK(!hf_bool_field_or(hf, key, false), "config.json: '", key, "' is true: ", why);
}

void read_attention(const json& hf, HfFamily family, ModelConfig& m, int64_t seq_len) {
  m.vocab_size = hf_int_field(hf, "vocab_size");
  m.d_model = hf_int_field(hf, "hidden_size");
  m.num_layers = hf_int_field(hf, "num_hidden_layers");
  m.num_heads = hf_int_field(hf, "num_attention_heads");
  m.num_kv_heads = hf_int_field_or(hf, "num_key_value_heads", m.num_heads);
  MOE_CHECK(m.num_heads > 0 && m.d_model % m.num_heads == 0, "config.json: 'hidden_size' = ", m.d_model,
            " is not a multiple of 'num_attention_heads' = ", m.num_heads);
  const int64_t head_dim = hf_int_field_or(hf, "head_dim", m.d_model / m.num_heads);
  MOE_CHECK(head_dim == m.d_model / m.num_heads, "config.json: 'head_dim' = ", head_dim,
            " differs from hidden_size / num_attention_heads = ", m.d_model / m.num_heads,
            ": the engine's heads split d_model");
  const int64_t max_positions = hf_int_field_or(hf, "max_position_embeddings", 4096);
  m.seq_len = seq_len > 0 ? seq_len : std::min<int64_t>(max_positions, 4096);
  m.norm = "rmsnorm";
  m.norm_eps = hf_number_field_or(hf, "rms_norm_eps", 1e-6);
  m.positions = "rope";
  m.rope_theta = rope_theta(hf);
  read_rope_scaling(hf, m);
  m.tie_embeddings = hf_bool_field_or(hf, "tie_word_embeddings", false);
  m.init_std = hf_number_field_or(hf, "initializer_range", 0.02);
  const std::string act = hf.value("hidden_act", std::string("silu"));
  MOE_CHECK(act == "silu", "config.json: 'hidden_act' = \"", act, "\": the engine's gated FFN is SwiGLU (silu)");
  m.activation = "swiglu";
  // Qwen2's q/k/v always have biases; Llama's and OLMoE's attention_bias puts one on q, k, v and o.
  const bool qwen = family == HfFamily::qwen2 || family == HfFamily::qwen2_moe;
  const bool biased = family == HfFamily::llama || family == HfFamily::olmoe;
  if (qwen) m.attention_bias = "qkv";
  if (biased && hf_bool_field_or(hf, "attention_bias", false)) m.attention_bias = "all";
  if (!qwen && !biased) refuse_true(hf, "attention_bias", "the engine reads attention biases of llama, olmoe, qwen2");
  if (family == HfFamily::llama) {
    m.ffn_bias = hf_bool_field_or(hf, "mlp_bias", false);
  } else {
    refuse_true(hf, "mlp_bias", "the engine reads FFN biases of llama and gpt2 only");
  }
  m.qk_norm = family == HfFamily::olmoe;  // OLMoE always normalises q and k
  refuse_true(hf, "use_qk_norm", "the engine's QK-norm is OLMoE's (model_type olmoe)");
  MOE_CHECK(!hf.contains("clip_qkv") || hf["clip_qkv"].is_null(), "config.json: 'clip_qkv' = ", hf["clip_qkv"].dump(),
            ": the engine does not clip q, k and v");
  // A sliding window at least as long as the sequence never cuts anything off.
  const bool window_used = !hf.contains("use_sliding_window") || hf_bool_field_or(hf, "use_sliding_window", false);
  if (window_used && hf.contains("sliding_window") && !hf["sliding_window"].is_null()) {
    const int64_t window = hf_int_field(hf, "sliding_window");
    MOE_CHECK(window >= m.seq_len, "config.json: 'sliding_window' = ", window, " is shorter than model.seq_len = ",
              m.seq_len, ": the engine has no sliding-window attention (convert with --seq-len ", window, ")");
  }
}

void read_moe(const json& hf, HfFamily family, Config& c) {
  MoeConfig& moe = c.moe;
  moe.router = "softmax_topk";
  moe.top_k = hf_int_field(hf, "num_experts_per_tok");
  moe.aux_loss_coef = hf_number_field_or(hf, "router_aux_loss_coef", 0.01);
  moe.capacity_factor = 0.0;
  if (family == HfFamily::mixtral) {
    moe.num_experts = hf_int_field(hf, "num_local_experts");
    moe.d_expert = hf_int_field(hf, "intermediate_size");
    moe.renormalize = true;
    const double jitter = hf_number_field_or(hf, "router_jitter_noise", 0.0);
    MOE_CHECK(jitter == 0.0, "config.json: 'router_jitter_noise' = ", jitter, ": the engine has no router jitter");
    return;
  }
  moe.num_experts = hf_int_field(hf, "num_experts");
  moe.renormalize = hf_bool_field_or(hf, "norm_topk_prob", false);
  if (family == HfFamily::olmoe) {  // every layer MoE, experts intermediate_size wide, no shared expert
    moe.d_expert = hf_int_field(hf, "intermediate_size");
    return;
  }
  moe.d_expert = hf_int_field(hf, "moe_intermediate_size");
  moe.every = hf_int_field_or(hf, "decoder_sparse_step", 1);
  const int64_t shared = hf_int_field_or(hf, "shared_expert_intermediate_size", 0);
  MOE_CHECK(shared > 0, "config.json: 'shared_expert_intermediate_size' must be positive for qwen2_moe");
  moe.num_shared_experts = 1;
  moe.d_shared = shared;
  moe.shared_gate = true;
  std::vector<int64_t> dense_layers;
  if (hf.contains("mlp_only_layers") && !hf["mlp_only_layers"].is_null()) {
    dense_layers = hf["mlp_only_layers"].get<std::vector<int64_t>>();
  }
  std::sort(dense_layers.begin(), dense_layers.end());
  for (size_t i = 0; i < dense_layers.size(); ++i) {
    MOE_CHECK(dense_layers[i] == static_cast<int64_t>(i) && moe.every == 1, "config.json: 'mlp_only_layers' = ",
              hf["mlp_only_layers"].dump(), ": the engine keeps only the first layers dense (0, 1, ..., k-1) and "
              "only with decoder_sparse_step = 1");
  }
  moe.first_dense = static_cast<int64_t>(dense_layers.size());
}

std::string layer(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

}  // namespace

HfFamily hf_family_from_name(const std::string& t) {
  if (t == "llama") return HfFamily::llama;
  if (t == "mistral") return HfFamily::mistral;
  if (t == "qwen2") return HfFamily::qwen2;
  if (t == "mixtral") return HfFamily::mixtral;
  if (t == "qwen2_moe") return HfFamily::qwen2_moe;
  if (t == "olmoe") return HfFamily::olmoe;
  if (t == "gpt2") return HfFamily::gpt2;
  MOE_FAIL("config.json: 'model_type' = \"", t,
           "\" is not supported (llama, mistral, qwen2, gpt2, mixtral, qwen2_moe, olmoe)");
}

const char* hf_family_name(HfFamily f) {
  switch (f) {
    case HfFamily::llama: return "llama";
    case HfFamily::mistral: return "mistral";
    case HfFamily::qwen2: return "qwen2";
    case HfFamily::mixtral: return "mixtral";
    case HfFamily::qwen2_moe: return "qwen2_moe";
    case HfFamily::olmoe: return "olmoe";
    case HfFamily::gpt2: return "gpt2";
  }
  return "?";
}

bool hf_family_is_moe(HfFamily f) {
  return f == HfFamily::mixtral || f == HfFamily::qwen2_moe || f == HfFamily::olmoe;
}

HfModelSpec hf_spec_from_config(const json& hf, int64_t seq_len, const std::string& run_dir) {
  MOE_CHECK(hf.is_object(), "config.json is not a JSON object");
  MOE_CHECK(hf.contains("model_type") && hf["model_type"].is_string(), "config.json has no 'model_type'");
  HfModelSpec spec;
  spec.family = hf_family_from_name(hf["model_type"].get<std::string>());
  Config& c = spec.config;
  if (spec.family == HfFamily::gpt2) {
    read_gpt2_config(hf, c.model, seq_len);
    c.train.run_dir = run_dir;
    c.train.resume = "latest";
    validate_config(c);
    return spec;
  }
  read_attention(hf, spec.family, c.model, seq_len);
  c.model.d_ff = hf_int_field(hf, "intermediate_size");
  c.moe.num_experts = 0;
  if (hf_family_is_moe(spec.family)) read_moe(hf, spec.family, c);
  c.train.run_dir = run_dir;
  c.train.resume = "latest";
  validate_config(c);
  return spec;
}

std::vector<std::string> hf_zero_tensors(const Config& c, HfFamily family) {
  std::vector<std::string> out;
  // Qwen2 always has q/k/v biases: a run without them exports zeros.
  if ((family != HfFamily::qwen2 && family != HfFamily::qwen2_moe) || c.model.attention_bias != "none") return out;
  for (int64_t i = 0; i < c.model.num_layers; ++i) {
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) out.push_back(layer(i) + "self_attn." + p + ".bias");
  }
  return out;
}

std::vector<HfTensorMap> hf_tensor_maps(const Config& c, HfFamily family) {
  if (family == HfFamily::gpt2) return hf_gpt2_tensor_maps(c);
  std::vector<HfTensorMap> maps;
  auto plain = [&](const std::string& engine, const std::string& hf, bool transpose) {
    maps.push_back({engine, {{hf}}, false, transpose});
  };
  plain("embed.tokens", "model.embed_tokens.weight", false);
  const MoeShape shape = moe_shape(c.moe);
  for (int64_t i = 0; i < c.model.num_layers; ++i) {
    const std::string e = "layers." + std::to_string(i) + ".", h = layer(i);
    plain(e + "attn_norm.weight", h + "input_layernorm.weight", false);
    plain(e + "ffn_norm.weight", h + "post_attention_layernorm.weight", false);
    for (const char* p : {"q", "k", "v", "o"}) {
      plain(e + "attn.w" + p, h + "self_attn." + p + "_proj.weight", true);
      const bool bias = c.model.attention_bias == "all" || (c.model.attention_bias == "qkv" && *p != 'o');
      if (bias) plain(e + "attn.b" + p, h + "self_attn." + p + "_proj.bias", false);
    }
    if (c.model.qk_norm) {
      plain(e + "attn.q_norm.weight", h + "self_attn.q_norm.weight", false);
      plain(e + "attn.k_norm.weight", h + "self_attn.k_norm.weight", false);
    }
    if (!is_moe_layer(c.model, c.moe, i)) {
      maps.push_back({e + "ffn.w_up", {{h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"}}, false, true});
      plain(e + "ffn.w_down", h + "mlp.down_proj.weight", true);
      if (c.model.ffn_bias) {
        maps.push_back({e + "ffn.b_up", {{h + "mlp.gate_proj.bias", h + "mlp.up_proj.bias"}}, false, false});
        plain(e + "ffn.b_down", h + "mlp.down_proj.bias", false);
      }
      continue;
    }
    const bool mixtral = family == HfFamily::mixtral;
    const std::string block = h + (mixtral ? "block_sparse_moe." : "mlp.");
    plain(e + "moe.router.weight", block + "gate.weight", true);
    HfTensorMap up{e + "moe.experts.w_up", {}, true, true}, down{e + "moe.experts.w_down", {}, true, true};
    for (int64_t j = 0; j < shape.num_experts; ++j) {
      const std::string x = block + "experts." + std::to_string(j) + ".";
      up.slices.push_back(mixtral ? std::vector<std::string>{x + "w1.weight", x + "w3.weight"}
                                  : std::vector<std::string>{x + "gate_proj.weight", x + "up_proj.weight"});
      down.slices.push_back({x + (mixtral ? "w2.weight" : "down_proj.weight")});
    }
    maps.push_back(up);
    maps.push_back(down);
    if (shape.num_shared > 0) {
      const std::string s = block + "shared_expert.";
      maps.push_back({e + "moe.shared.w_up", {{s + "gate_proj.weight", s + "up_proj.weight"}}, false, true});
      plain(e + "moe.shared.w_down", s + "down_proj.weight", true);
      plain(e + "moe.shared.gate", block + "shared_expert_gate.weight", true);
    }
  }
  plain("final_norm.weight", "model.norm.weight", false);
  if (!c.model.tie_embeddings) plain("lm_head.weight", "lm_head.weight", true);
  return maps;
}

namespace {

// rope_scaling (transformers 4) or rope_parameters (transformers 5, when the base has it) of the
// model's rope keys; an imported object that says the same is kept as it was (bit-exact round trip).
void write_rope_scaling(const ModelConfig& m, json& out) {
  json scaling = nullptr;
  if (m.rope_scaling != "none") {
    scaling = {{"rope_type", m.rope_scaling}, {"factor", m.rope_factor}};
    if (m.rope_scaling == "llama3") {
      scaling["low_freq_factor"] = m.rope_low_freq_factor;
      scaling["high_freq_factor"] = m.rope_high_freq_factor;
      scaling["original_max_position_embeddings"] = m.rope_original_max_positions;
    }
  }
  const bool v5 = out.contains("rope_parameters");
  const char* key = v5 ? "rope_parameters" : "rope_scaling";
  if (out.contains(key) && out[key].is_object()) {
    ModelConfig imported = m;
    imported.rope_scaling = "none";
    read_rope_scaling(out, imported);
    const bool same = imported.rope_scaling == m.rope_scaling && imported.rope_factor == m.rope_factor &&
                      imported.rope_low_freq_factor == m.rope_low_freq_factor &&
                      imported.rope_high_freq_factor == m.rope_high_freq_factor &&
                      imported.rope_original_max_positions == m.rope_original_max_positions &&
                      hf_number_field_or(out[key], "rope_theta", m.rope_theta) == m.rope_theta;
    if (same) return;
  }
  if (v5) {
    if (scaling.is_null()) scaling = {{"rope_type", "default"}};
    scaling["rope_theta"] = m.rope_theta;
    out["rope_parameters"] = scaling;
  } else {
    out["rope_scaling"] = scaling;
  }
}

// Refuses what `family` cannot express for this run, naming the engine key.
void check_exportable(const Config& c, HfFamily family) {
  const ModelConfig& m = c.model;
  const std::string to = std::string(" (exporting to ") + hf_family_name(family) + ")";
  MOE_CHECK(m.norm == "rmsnorm", "model.norm = \"", m.norm, "\" cannot be exported: the target uses RMSNorm", to);
  MOE_CHECK(m.positions == "rope", "model.positions = \"", m.positions, "\" cannot be exported: the target uses rotary "
            "positions", to);
  MOE_CHECK(m.activation == "swiglu", "model.activation = \"", m.activation,
            "\" cannot be exported: the target's FFN is SwiGLU", to);
  MOE_CHECK(m.objective == "causal_lm", "model.objective = \"", m.objective, "\" cannot be exported", to);
  const bool qwen = family == HfFamily::qwen2 || family == HfFamily::qwen2_moe;
  const bool biased = family == HfFamily::llama || family == HfFamily::olmoe;
  MOE_CHECK(m.attention_bias == "none" || (qwen && m.attention_bias == "qkv") || (biased && m.attention_bias == "all"),
            "model.attention_bias = \"", m.attention_bias, "\" cannot be exported: the target has ",
            qwen ? "q/k/v biases only" : biased ? "biases on all four projections or none" : "no attention biases", to);
  MOE_CHECK(!m.ffn_bias || family == HfFamily::llama, "model.ffn_bias = true cannot be exported: the target's FFN has "
            "no biases", to);
  MOE_CHECK(m.qk_norm == (family == HfFamily::olmoe), "model.qk_norm = ", m.qk_norm ? "true" : "false",
            " cannot be exported: ", family == HfFamily::olmoe ? "OLMoE always normalises q and k" : "the target has "
            "no QK-norm", to);
  if (!hf_family_is_moe(family)) {
    MOE_CHECK(c.moe.num_experts == 0, "moe.num_experts = ", c.moe.num_experts, ": an MoE run cannot be exported as a "
              "dense model", to, "; use --arch mixtral or qwen2_moe");
    return;
  }
  const MoeConfig& moe = c.moe;
  MOE_CHECK(moe.num_experts > 0, "moe.num_experts = 0: a dense run cannot be exported as an MoE model", to);
  std::vector<std::string> routers = moe.layer_routers;
  routers.push_back(moe.router);
  for (const std::string& r : routers) {
    MOE_CHECK(r == "softmax_topk" || r == "topk_softmax", "moe.router = \"", r, "\" cannot be exported: the target "
              "routes by a softmax over a linear gate, top-k (hash routers, expert choice, sigmoid and noisy gates "
              "have no equivalent)", to);
  }
  const std::string expert_act = moe.activation.empty() ? m.activation : moe.activation;
  MOE_CHECK(expert_act == "swiglu", "moe.activation = \"", expert_act, "\" cannot be exported: the target's experts "
            "are SwiGLU", to);
  MOE_CHECK(moe.expert_bias_rate == 0.0, "moe.expert_bias_rate = ", moe.expert_bias_rate, " cannot be exported: the "
            "target has no expert bias in its selection", to);
  MOE_CHECK(moe.num_groups == 0, "moe.num_groups = ", moe.num_groups, " cannot be exported: the target has no "
            "group-limited routing", to);
  MOE_CHECK(moe.capacity_factor == 0.0, "moe.capacity_factor = ", moe.capacity_factor, " cannot be exported: the "
            "target is dropless", to);
  const bool renorm = moe.renormalize || moe.router == "topk_softmax";
  if (family == HfFamily::olmoe) {
    MOE_CHECK(moe.num_shared_experts == 0, "moe.num_shared_experts = ", moe.num_shared_experts,
              " cannot be exported: OLMoE has no shared experts", to);
    MOE_CHECK(moe.every == 1 && moe.first_dense == 0, "moe.every = ", moe.every, ", moe.first_dense = ",
              moe.first_dense, " cannot be exported: every OLMoE layer is MoE", to);
    return;
  }
  if (family == HfFamily::mixtral) {
    MOE_CHECK(moe.num_shared_experts == 0, "moe.num_shared_experts = ", moe.num_shared_experts,
              " cannot be exported: Mixtral has no shared experts", to, "; use --arch qwen2_moe");
    MOE_CHECK(moe.every == 1 && moe.first_dense == 0, "moe.every = ", moe.every, ", moe.first_dense = ",
              moe.first_dense, " cannot be exported: every Mixtral layer is MoE", to);
    MOE_CHECK(renorm, "moe.renormalize = false cannot be exported: Mixtral renormalises the top-k weights", to);
    return;
  }
  MOE_CHECK(moe.num_shared_experts == 1 && moe.shared_gate, "moe.num_shared_experts = ", moe.num_shared_experts,
            ", moe.shared_gate = ", moe.shared_gate ? "true" : "false", " cannot be exported: Qwen2-MoE has exactly "
            "one shared expert with a sigmoid gate", to);
  MOE_CHECK(moe.first_dense == 0 || moe.every == 1, "moe.first_dense = ", moe.first_dense, " with moe.every = ",
            moe.every, " cannot be exported: Qwen2-MoE's mlp_only_layers and decoder_sparse_step do not combine", to);
}

}  // namespace

HfFamily default_export_family(const Config& c, const nlohmann::json& base) {
  if (base.is_object() && base.contains("model_type") && base["model_type"].is_string()) {
    return hf_family_from_name(base["model_type"].get<std::string>());
  }
  if (c.moe.num_experts == 0) return c.model.positions == "learned" ? HfFamily::gpt2 : HfFamily::llama;
  return c.moe.num_shared_experts > 0 ? HfFamily::qwen2_moe : HfFamily::mixtral;
}

nlohmann::json hf_config_from_engine(const Config& c, HfFamily family, const nlohmann::json& base,
                                     const std::string& torch_dtype) {
  const ModelConfig& m = c.model;
  json out = base.is_object() && base.value("model_type", std::string()) == hf_family_name(family) ? base : json::object();
  static const char* arch[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM",
                               "Qwen2MoeForCausalLM", "OlmoeForCausalLM", "GPT2LMHeadModel"};
  out["architectures"] = {arch[static_cast<int>(family)]};
  out["model_type"] = hf_family_name(family);
  if (out.contains("dtype")) out["dtype"] = torch_dtype;
  else out["torch_dtype"] = torch_dtype;
  if (family == HfFamily::gpt2) {
    write_gpt2_config(c, out);
    return out;
  }
  check_exportable(c, family);
  out["vocab_size"] = m.vocab_size;
  out["hidden_size"] = m.d_model;
  out["num_hidden_layers"] = m.num_layers;
  out["num_attention_heads"] = m.num_heads;
  out["num_key_value_heads"] = m.num_kv_heads;
  out["head_dim"] = m.d_model / m.num_heads;
  out["intermediate_size"] = m.d_ff;
  out["hidden_act"] = "silu";
  out["rms_norm_eps"] = m.norm_eps;
  out["initializer_range"] = m.init_std;
  out["tie_word_embeddings"] = m.tie_embeddings;
  if (!out.contains("max_position_embeddings")) out["max_position_embeddings"] = m.seq_len;
  out["rope_theta"] = m.rope_theta;
  write_rope_scaling(m, out);
  if (family == HfFamily::llama || family == HfFamily::olmoe) out["attention_bias"] = m.attention_bias == "all";
  if (family == HfFamily::llama) out["mlp_bias"] = m.ffn_bias;
  // An imported window was at least model.seq_len long (import refuses shorter ones): kept as it was.
  if ((family == HfFamily::mistral || family == HfFamily::mixtral) && !out.contains("sliding_window")) {
    out["sliding_window"] = nullptr;
  }
  if (family == HfFamily::qwen2 || family == HfFamily::qwen2_moe) out["use_sliding_window"] = false;
  const MoeShape shape = moe_shape(c.moe);
  if (family == HfFamily::mixtral) {
    out["num_local_experts"] = shape.num_experts;
    out["num_experts_per_tok"] = shape.top_k;
    out["intermediate_size"] = shape.d_expert;
    out["router_aux_loss_coef"] = c.moe.aux_loss_coef;
    out["router_jitter_noise"] = 0.0;
  } else if (family == HfFamily::qwen2_moe) {
    out["num_experts"] = shape.num_experts;
    out["num_experts_per_tok"] = shape.top_k;
    out["moe_intermediate_size"] = shape.d_expert;
    out["shared_expert_intermediate_size"] = shape.d_shared;
    out["norm_topk_prob"] = c.moe.renormalize || c.moe.router == "topk_softmax";
    out["decoder_sparse_step"] = c.moe.every;
    std::vector<int64_t> dense_layers;
    for (int64_t i = 0; i < c.moe.first_dense; ++i) dense_layers.push_back(i);
    out["mlp_only_layers"] = dense_layers;
    out["router_aux_loss_coef"] = c.moe.aux_loss_coef;
  } else if (family == HfFamily::olmoe) {
    out["num_experts"] = shape.num_experts;
    out["num_experts_per_tok"] = shape.top_k;
    out["intermediate_size"] = shape.d_expert;
    out["norm_topk_prob"] = c.moe.renormalize || c.moe.router == "topk_softmax";
    out["router_aux_loss_coef"] = c.moe.aux_loss_coef;
    out["clip_qkv"] = nullptr;
  }
  return out;
}

}  // namespace moe

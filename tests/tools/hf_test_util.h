// Synthetic Hugging Face directories for the interop tests, built without the converter's code:
// a minimal safetensors writer and reader, HF-named random weights, and a double-precision
// reference forward of Llama / Mistral / Qwen2 / Mixtral / Qwen2-MoE / OLMoE straight from HF
// tensors (with attention and MLP biases, QK-norm and linear / llama3 rope scaling; GPT-2:
// hf_test_gpt2.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::hf_test {

using nlohmann::json;

struct StTensor {
  std::string dtype;  // F32 | BF16 | F16 | F64
  std::vector<int64_t> shape;
  std::vector<float> values;
};
using StMap = std::map<std::string, StTensor>;

// Values on a grid every dtype holds exactly (k/32 * scale, plus 1 for norm gains: at most 7
// significant bits, so bf16, f16 and f32 store the same number).
inline float grid_value(std::mt19937_64& rng, double scale) {
  std::uniform_int_distribution<int> k(-32, 32);
  return static_cast<float>(k(rng) / 32.0 * scale);
}

inline void put_bytes(std::string& out, const StTensor& t) {
  for (float v : t.values) {
    if (t.dtype == "F32") {
      out.append(reinterpret_cast<const char*>(&v), 4);
    } else if (t.dtype == "F64") {
      double d = v;
      out.append(reinterpret_cast<const char*>(&d), 8);
    } else if (t.dtype == "BF16") {  // grid values are exact in bf16: the high half of the f32 bits
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      uint16_t hi = static_cast<uint16_t>(bits >> 16);
      out.append(reinterpret_cast<const char*>(&hi), 2);
    } else {  // F16, exact for the grid: sign, exponent, 10-bit mantissa by hand
      uint16_t h = 0;
      if (v != 0.0f) {
        const int e = static_cast<int>(std::floor(std::log2(std::fabs(v))));
        const double m = std::fabs(v) / std::ldexp(1.0, e) - 1.0;
        h = static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | ((e + 15) << 10) | static_cast<int>(std::lround(m * 1024)));
      }
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
}

inline int64_t dtype_size(const std::string& d) { return d == "F64" ? 8 : d == "F32" ? 4 : 2; }

inline void write_st(const std::filesystem::path& path, const StMap& tensors) {
  json header = {{"__metadata__", {{"format", "pt"}}}};
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t bytes = t.values.size() * static_cast<uint64_t>(dtype_size(t.dtype));
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  const std::string text = header.dump();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  out += text;
  for (const auto& [name, t] : tensors) put_bytes(out, t);
  std::ofstream(path, std::ios::binary) << out;
}

// Every tensor of a safetensors file as (dtype, shape, raw bytes), for bit-exact comparisons.
struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
  bool operator==(const RawTensor&) const = default;
};
inline std::map<std::string, RawTensor> read_raw(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(all[i]);
  json header = json::parse(all.substr(8, n));
  std::map<std::string, RawTensor> out;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    const auto off = e["data_offsets"].get<std::vector<uint64_t>>();
    out[name] = {e["dtype"].get<std::string>(), e["shape"].get<std::vector<int64_t>>(),
                 all.substr(8 + n + off[0], off[1] - off[0])};
  }
  return out;
}

// w[name] = a tensor of random grid values (plus offset) of that shape and dtype.
inline void add_random(StMap& w, std::mt19937_64& rng, const std::string& name, const std::string& dtype,
                       const std::vector<int64_t>& shape, double scale, double offset = 0.0) {
  StTensor t{dtype, shape, {}};
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  for (int64_t i = 0; i < n; ++i) t.values.push_back(static_cast<float>(offset) + grid_value(rng, scale));
  w[name] = t;
}

// The HF-named weights of a model described by config.json `c`, random on the exact grid.
inline StMap random_weights(const json& c, const std::string& dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  StMap w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double scale, double offset = 0.0) {
    add_random(w, rng, name, dtype, shape, scale, offset);
  };
  const std::string type = c["model_type"];
  const int64_t d = c["hidden_size"], layers = c["num_hidden_layers"], heads = c["num_attention_heads"];
  const int64_t kv = c["num_key_value_heads"], hd = d / heads, vocab = c["vocab_size"];
  add("model.embed_tokens.weight", {vocab, d}, 1.0);
  add("model.norm.weight", {d}, 0.25, 1.0);
  if (!c.value("tie_word_embeddings", false)) add("lm_head.weight", {vocab, d}, 0.5);
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {d}, 0.25, 1.0);
    add(p + "post_attention_layernorm.weight", {d}, 0.25, 1.0);
    add(p + "self_attn.q_proj.weight", {heads * hd, d}, 0.5);
    add(p + "self_attn.k_proj.weight", {kv * hd, d}, 0.5);
    add(p + "self_attn.v_proj.weight", {kv * hd, d}, 0.5);
    add(p + "self_attn.o_proj.weight", {d, heads * hd}, 0.5);
    const bool all_biases = c.value("attention_bias", false);
    if (type == "qwen2" || type == "qwen2_moe" || all_biases) {
      add(p + "self_attn.q_proj.bias", {heads * hd}, 0.5);
      add(p + "self_attn.k_proj.bias", {kv * hd}, 0.5);
      add(p + "self_attn.v_proj.bias", {kv * hd}, 0.5);
      if (all_biases) add(p + "self_attn.o_proj.bias", {d}, 0.5);
    }
    if (type == "olmoe") {
      add(p + "self_attn.q_norm.weight", {heads * hd}, 0.25, 1.0);
      add(p + "self_attn.k_norm.weight", {kv * hd}, 0.25, 1.0);
    }
    const bool mlp_bias = c.value("mlp_bias", false);
    auto mlp = [&](const std::string& q, int64_t f, const char* g, const char* u, const char* dn) {
      add(q + g + ".weight", {f, d}, 0.5);
      add(q + u + ".weight", {f, d}, 0.5);
      add(q + dn + ".weight", {d, f}, 0.5);
      if (mlp_bias) {
        add(q + g + ".bias", {f}, 0.5);
        add(q + u + ".bias", {f}, 0.5);
        add(q + dn + ".bias", {d}, 0.5);
      }
    };
    bool sparse = false;
    if (type == "mixtral" || type == "olmoe") sparse = true;
    if (type == "qwen2_moe") {
      const auto dense_layers = c.value("mlp_only_layers", std::vector<int64_t>{});
      sparse = std::find(dense_layers.begin(), dense_layers.end(), i) == dense_layers.end() &&
               (i + 1) % c.value("decoder_sparse_step", 1) == 0;
    }
    if (!sparse) {
      mlp(p + "mlp.", c["intermediate_size"], "gate_proj", "up_proj", "down_proj");
    } else if (type == "mixtral") {
      add(p + "block_sparse_moe.gate.weight", {c["num_local_experts"].get<int64_t>(), d}, 1.0);
      for (int64_t e = 0; e < c["num_local_experts"].get<int64_t>(); ++e) {
        mlp(p + "block_sparse_moe.experts." + std::to_string(e) + ".", c["intermediate_size"], "w1", "w3", "w2");
      }
    } else {
      add(p + "mlp.gate.weight", {c["num_experts"].get<int64_t>(), d}, 1.0);
      const int64_t f = type == "olmoe" ? c["intermediate_size"] : c["moe_intermediate_size"];
      for (int64_t e = 0; e < c["num_experts"].get<int64_t>(); ++e) {
        mlp(p + "mlp.experts." + std::to_string(e) + ".", f, "gate_proj", "up_proj", "down_proj");
      }
      if (type == "qwen2_moe") {
        mlp(p + "mlp.shared_expert.", c["shared_expert_intermediate_size"], "gate_proj", "up_proj", "down_proj");
        add(p + "mlp.shared_expert_gate.weight", {1, d}, 0.5);
      }
    }
  }
  return w;
}

using Vec = std::vector<double>;

// y[rows] = W[rows, cols] x (nn.Linear's layout).
inline Vec matvec(const StTensor& w, const Vec& x) {
  const int64_t rows = w.shape[0], cols = w.shape[1];
  Vec y(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; ++k) y[r] += static_cast<double>(w.values[r * cols + k]) * x[k];
  }
  return y;
}

// nn.Linear "<name>.weight" (+ "<name>.bias" when the checkpoint has one).
inline Vec linear(const std::map<std::string, StTensor>& w, const std::string& name, const Vec& x) {
  Vec y = matvec(w.at(name + ".weight"), x);
  auto b = w.find(name + ".bias");
  if (b != w.end()) {
    for (size_t i = 0; i < y.size(); ++i) y[i] += b->second.values[i];
  }
  return y;
}

inline Vec rmsnorm(const Vec& x, const StTensor& w, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  const double r = 1.0 / std::sqrt(ms / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w.values[i];
  return y;
}

inline double silu(double v) { return v / (1.0 + std::exp(-v)); }

inline Vec swiglu_mlp(const StMap& w, const std::string& p, const std::string& g, const std::string& u,
                      const std::string& dn, const Vec& x) {
  Vec a = linear(w, p + g, x), b = linear(w, p + u, x);
  for (size_t i = 0; i < a.size(); ++i) a[i] = silu(a[i]) * b[i];
  return linear(w, p + dn, a);
}

// transformers' inverse frequency of pair i with config.json's rope_scaling (default, linear,
// llama3; _compute_llama3_parameters written out).
inline double inv_freq(const json& c, int64_t i, int64_t hd) {
  const double base = std::pow(c.value("rope_theta", 10000.0), -2.0 * i / hd);
  if (!c.contains("rope_scaling") || c["rope_scaling"].is_null()) return base;
  const json& r = c["rope_scaling"];
  const std::string type = r.value("rope_type", r.value("type", std::string("default")));  // "type": older configs
  if (type == "linear") return base / r["factor"].get<double>();
  if (type != "llama3") return base;
  const double factor = r["factor"], low = r["low_freq_factor"], high = r["high_freq_factor"];
  const double old_len = r["original_max_position_embeddings"];
  const double wavelen = 2 * M_PI / base;
  if (wavelen < old_len / high) return base;
  if (wavelen > old_len / low) return base / factor;
  const double smooth = (old_len / wavelen - low) / (high - low);
  return (1 - smooth) * base / factor + smooth * base;
}

inline void rope(Vec& v, int64_t heads, int64_t hd, int64_t pos, const json& config) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double a = pos * inv_freq(config, i, hd), c = std::cos(a), s = std::sin(a);
      double& x1 = v[h * hd + i];
      double& x2 = v[h * hd + i + hd / 2];
      const double y1 = x1 * c - x2 * s, y2 = x1 * s + x2 * c;
      x1 = y1;
      x2 = y2;
    }
  }
}

// The MoE block of Mixtral / Qwen2-MoE: softmax over all experts, top-k, renormalised by flag.
inline Vec moe_block(const StMap& w, const json& c, const std::string& p, const Vec& x) {
  const bool mixtral = c["model_type"] == "mixtral";
  const std::string b = p + (mixtral ? "block_sparse_moe." : "mlp.");
  Vec logits = matvec(w.at(b + "gate.weight"), x);
  const double mx = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (double& l : logits) z += (l = std::exp(l - mx));
  std::vector<int> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b2) { return logits[a] > logits[b2]; });
  const int k = c["num_experts_per_tok"];
  const bool renorm = mixtral || c.value("norm_topk_prob", false);
  double sel = 0;
  for (int j = 0; j < k; ++j) sel += logits[order[j]];
  Vec y(x.size(), 0.0);
  for (int j = 0; j < k; ++j) {
    const std::string e = b + "experts." + std::to_string(order[j]) + ".";
    const Vec out = mixtral ? swiglu_mlp(w, e, "w1", "w3", "w2", x) : swiglu_mlp(w, e, "gate_proj", "up_proj", "down_proj", x);
    const double weight = logits[order[j]] / (renorm ? sel : z);
    for (size_t i = 0; i < y.size(); ++i) y[i] += weight * out[i];
  }
  if (w.count(b + "shared_expert_gate.weight") > 0) {
    const Vec s = swiglu_mlp(w, b + "shared_expert.", "gate_proj", "up_proj", "down_proj", x);
    const double g = 1.0 / (1.0 + std::exp(-matvec(w.at(b + "shared_expert_gate.weight"), x)[0]));
    for (size_t i = 0; i < y.size(); ++i) y[i] += g * s[i];
  }
  return y;
}

// Logits [S, V] of one sequence, in double, from the HF tensors and config.json alone.
inline std::vector<double> reference_logits(const StMap& w, const json& c, const std::vector<int32_t>& tokens) {
  const int64_t d = c["hidden_size"], layers = c["num_hidden_layers"], heads = c["num_attention_heads"];
  const int64_t kv = c["num_key_value_heads"], hd = d / heads, vocab = c["vocab_size"];
  const int64_t S = static_cast<int64_t>(tokens.size());
  const double eps = c["rms_norm_eps"];
  const std::string type = c["model_type"];
  std::vector<Vec> x(S);
  for (int64_t t = 0; t < S; ++t) {
    x[t].assign(w.at("model.embed_tokens.weight").values.begin() + tokens[t] * d,
                w.at("model.embed_tokens.weight").values.begin() + (tokens[t] + 1) * d);
  }
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<Vec> q(S), k(S), v(S);
    for (int64_t t = 0; t < S; ++t) {
      const Vec h = rmsnorm(x[t], w.at(p + "input_layernorm.weight"), eps);
      q[t] = linear(w, p + "self_attn.q_proj", h);
      k[t] = linear(w, p + "self_attn.k_proj", h);
      v[t] = linear(w, p + "self_attn.v_proj", h);
      if (type == "olmoe") {  // QK-norm over the whole projections, before rope
        q[t] = rmsnorm(q[t], w.at(p + "self_attn.q_norm.weight"), eps);
        k[t] = rmsnorm(k[t], w.at(p + "self_attn.k_norm.weight"), eps);
      }
      rope(q[t], heads, hd, t, c);
      rope(k[t], kv, hd, t, c);
    }
    for (int64_t t = 0; t < S; ++t) {
      Vec att(heads * hd, 0.0);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t g = h / (heads / kv);
        std::vector<double> s(t + 1);
        double mx = -1e300, z = 0;
        for (int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < hd; ++i) dot += q[t][h * hd + i] * k[u][g * hd + i];
          mx = std::max(mx, s[u] = dot / std::sqrt(static_cast<double>(hd)));
        }
        for (int64_t u = 0; u <= t; ++u) z += (s[u] = std::exp(s[u] - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int64_t i = 0; i < hd; ++i) att[h * hd + i] += s[u] / z * v[u][g * hd + i];
        }
      }
      const Vec o = linear(w, p + "self_attn.o_proj", att);
      for (int64_t i = 0; i < d; ++i) x[t][i] += o[i];
      const Vec h2 = rmsnorm(x[t], w.at(p + "post_attention_layernorm.weight"), eps);
      const bool sparse = w.count(p + "mlp.gate.weight") > 0 || w.count(p + "block_sparse_moe.gate.weight") > 0;
      const Vec y = sparse ? moe_block(w, c, p, h2) : swiglu_mlp(w, p + "mlp.", "gate_proj", "up_proj", "down_proj", h2);
      for (int64_t i = 0; i < d; ++i) x[t][i] += y[i];
    }
  }
  const StTensor& head = c.value("tie_word_embeddings", false) ? w.at("model.embed_tokens.weight") : w.at("lm_head.weight");
  std::vector<double> out;
  for (int64_t t = 0; t < S; ++t) {
    const Vec logits = matvec(head, rmsnorm(x[t], w.at("model.norm.weight"), eps));
    out.insert(out.end(), logits.begin(), logits.end());
  }
  (void)vocab;
  return out;
}

// config.json of a tiny model of each family (8 positions are used).
inline json tiny_config(const std::string& type) {
  json c = {{"model_type", type}, {"vocab_size", 40}, {"hidden_size", 16}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 24},
            {"hidden_act", "silu"}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
            {"rope_theta", 500000.0}, {"tie_word_embeddings", false}, {"torch_dtype", "bfloat16"},
            {"bos_token_id", 1}, {"eos_token_id", 2}};
  if (type == "mistral") c["sliding_window"] = 4096;
  if (type == "qwen2") c["use_sliding_window"] = false;
  if (type == "mixtral") {
    c["num_local_experts"] = 4;
    c["num_experts_per_tok"] = 2;
    c["router_aux_loss_coef"] = 0.02;
  }
  if (type == "olmoe") {
    c["num_experts"] = 4;
    c["num_experts_per_tok"] = 2;
    c["intermediate_size"] = 8;
    c["norm_topk_prob"] = false;
    c["router_aux_loss_coef"] = 0.01;
    c["clip_qkv"] = nullptr;
  }
  if (type == "qwen2_moe") {
    c["num_hidden_layers"] = 3;
    c["num_experts"] = 4;
    c["num_experts_per_tok"] = 2;
    c["moe_intermediate_size"] = 8;
    c["shared_expert_intermediate_size"] = 12;
    c["norm_topk_prob"] = false;
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = {0};
  }
  return c;
}

// Writes config.json and the weights: one file, or one shard per tensor group with an index.
inline void write_hf_dir(const std::filesystem::path& dir, const json& config, const StMap& w, bool sharded) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(2);
  if (!sharded) {
    write_st(dir / "model.safetensors", w);
    return;
  }
  StMap a, b;
  json map = json::object();
  for (const auto& [name, t] : w) {
    const bool first = name.find("layers.0.") != std::string::npos || name.find("embed") != std::string::npos;
    (first ? a : b)[name] = t;
    map[name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_st(dir / "model-00001-of-00002.safetensors", a);
  write_st(dir / "model-00002-of-00002.safetensors", b);
  std::ofstream(dir / "model.safetensors.index.json") << json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump(2);
}

}  // namespace moe::hf_test

// Synthetic GPT-2 checkpoints for the interop tests, independent of the converter: HF-named
// random weights (Conv1D [in, out], fused c_attn) and a double-precision reference forward.
#pragma once

#include "tests/tools/hf_test_util.h"

namespace moe::hf_test {

inline json tiny_gpt2_config() {
  return {{"model_type", "gpt2"}, {"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", 40}, {"n_embd", 16},
          {"n_layer", 2}, {"n_head", 4}, {"n_positions", 8}, {"n_ctx", 8}, {"n_inner", nullptr},
          {"activation_function", "gelu_new"}, {"layer_norm_epsilon", 1e-5}, {"initializer_range", 0.02},
          {"tie_word_embeddings", true}, {"torch_dtype", "float32"}, {"bos_token_id", 0}, {"eos_token_id", 0}};
}

// The tensors GPT2LMHeadModel.save_pretrained writes (tied head: no lm_head.weight).
inline StMap random_gpt2_weights(const json& c, const std::string& dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  StMap w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double scale, double offset = 0.0) {
    add_random(w, rng, name, dtype, shape, scale, offset);
  };
  const int64_t d = c["n_embd"], f = c["n_inner"].is_null() ? 4 * d : c["n_inner"].get<int64_t>();
  add("transformer.wte.weight", {c["vocab_size"].get<int64_t>(), d}, 1.0);
  add("transformer.wpe.weight", {c["n_positions"].get<int64_t>(), d}, 0.5);
  for (int64_t i = 0; i < c["n_layer"].get<int64_t>(); ++i) {
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    add(p + "ln_1.weight", {d}, 0.25, 1.0);
    add(p + "ln_1.bias", {d}, 0.25);
    add(p + "attn.c_attn.weight", {d, 3 * d}, 0.5);
    add(p + "attn.c_attn.bias", {3 * d}, 0.5);
    add(p + "attn.c_proj.weight", {d, d}, 0.5);
    add(p + "attn.c_proj.bias", {d}, 0.5);
    add(p + "ln_2.weight", {d}, 0.25, 1.0);
    add(p + "ln_2.bias", {d}, 0.25);
    add(p + "mlp.c_fc.weight", {d, f}, 0.5);
    add(p + "mlp.c_fc.bias", {f}, 0.5);
    add(p + "mlp.c_proj.weight", {f, d}, 0.5);
    add(p + "mlp.c_proj.bias", {d}, 0.5);
  }
  add("transformer.ln_f.weight", {d}, 0.25, 1.0);
  add("transformer.ln_f.bias", {d}, 0.25);
  if (!c.value("tie_word_embeddings", true)) add("lm_head.weight", {c["vocab_size"].get<int64_t>(), d}, 0.5);
  return w;
}

// Conv1D: y[out] = x[in] W[in, out] + b.
inline Vec conv1d(const StMap& w, const std::string& name, const Vec& x) {
  const StTensor& m = w.at(name + ".weight");
  const int64_t in = m.shape[0], out = m.shape[1];
  Vec y(w.at(name + ".bias").values.begin(), w.at(name + ".bias").values.end());
  for (int64_t k = 0; k < in; ++k) {
    for (int64_t j = 0; j < out; ++j) y[j] += x[k] * m.values[k * out + j];
  }
  return y;
}

inline Vec layernorm(const Vec& x, const StMap& w, const std::string& name, double eps) {
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  const double r = 1.0 / std::sqrt(var / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    y[i] = (x[i] - mean) * r * w.at(name + ".weight").values[i] + w.at(name + ".bias").values[i];
  }
  return y;
}

inline double gelu_new(double v) {
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
}

// Logits [S, V] of one sequence from the GPT-2 tensors (tied head).
inline std::vector<double> gpt2_reference_logits(const StMap& w, const json& c, const std::vector<int32_t>& tokens) {
  const int64_t d = c["n_embd"], heads = c["n_head"], hd = d / heads, S = static_cast<int64_t>(tokens.size());
  const double eps = c["layer_norm_epsilon"];
  const StTensor& wte = w.at("transformer.wte.weight");
  std::vector<Vec> x(S, Vec(d));
  for (int64_t t = 0; t < S; ++t) {
    for (int64_t i = 0; i < d; ++i) {
      x[t][i] = wte.values[tokens[t] * d + i] + w.at("transformer.wpe.weight").values[t * d + i];
    }
  }
  for (int64_t l = 0; l < c["n_layer"].get<int64_t>(); ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    std::vector<Vec> qkv(S);
    for (int64_t t = 0; t < S; ++t) qkv[t] = conv1d(w, p + "attn.c_attn", layernorm(x[t], w, p + "ln_1", eps));
    for (int64_t t = 0; t < S; ++t) {
      Vec att(d, 0.0);
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> s(t + 1);
        double mx = -1e300, z = 0;
        for (int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < hd; ++i) dot += qkv[t][h * hd + i] * qkv[u][d + h * hd + i];
          mx = std::max(mx, s[u] = dot / std::sqrt(static_cast<double>(hd)));
        }
        for (int64_t u = 0; u <= t; ++u) z += (s[u] = std::exp(s[u] - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int64_t i = 0; i < hd; ++i) att[h * hd + i] += s[u] / z * qkv[u][2 * d + h * hd + i];
        }
      }
      const Vec o = conv1d(w, p + "attn.c_proj", att);
      for (int64_t i = 0; i < d; ++i) x[t][i] += o[i];
      Vec hidden = conv1d(w, p + "mlp.c_fc", layernorm(x[t], w, p + "ln_2", eps));
      for (double& v : hidden) v = gelu_new(v);
      const Vec m = conv1d(w, p + "mlp.c_proj", hidden);
      for (int64_t i = 0; i < d; ++i) x[t][i] += m[i];
    }
  }
  std::vector<double> out;
  for (int64_t t = 0; t < S; ++t) {
    const Vec logits = matvec(wte, layernorm(x[t], w, "transformer.ln_f", eps));
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

}  // namespace moe::hf_test

// f64 finite-difference gradient checks of the model's own modules: norms and attention. Other
// modules: tests/nn (dense FFN), tests/experts, tests/parallel (local dispatcher), tests/routing.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "src/model/attention.h"
#include "src/model/norm.h"
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using test::check_gradient;
using test::check_param_gradients;
using test::f64_tensor;
using test::randomize_param;
using test::require_grads_doubled;
using test::snapshot_grads;
using test::weighted_sum;
using test::k_init_std;

namespace {

// A norm over `width` in f64 with weights (and bias) away from their ones (zeros) init.
Norm random_norm(ParamStore& store, NormKind kind, int64_t width) {
  Norm norm(store, "norm", width, kind, 1e-5f);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(3);
  randomize_param(store, store.find("norm.weight"), 4, 0.5, 1.5);
  if (kind == NormKind::layernorm) randomize_param(store, store.find("norm.bias"), 5, -1.0, 1.0);
  return norm;
}

}  // namespace

TEST_CASE("norm gradients match finite differences", "[model][gradcheck][module]") {
  auto kind = GENERATE(NormKind::rmsnorm, NormKind::layernorm);
  INFO("norm " << (kind == NormKind::rmsnorm ? "rmsnorm" : "layernorm"));
  const int64_t tokens = 5, width = 7;
  ParamStore store;
  Norm norm = random_norm(store, kind, width);

  Tensor x = test::random_tensor({tokens, width}, DType::f64, 6, Device::cpu(), -2.0, 2.0);
  auto w = test::random_values(tokens * width, 7);
  auto objective = [&]() {
    Norm::Saved s;
    return weighted_sum(norm.forward(x, s), w);
  };

  store.zero_grads();
  Norm::Saved saved;
  norm.forward(x, saved);
  Tensor dy = f64_tensor(w, {tokens, width});
  Tensor dx = norm.backward(saved, dy);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);

  auto first = snapshot_grads(store);
  norm.backward(saved, dy);
  require_grads_doubled(store, first);
}

TEST_CASE("fused residual add + norm gradients match finite differences", "[model][gradcheck][module]") {
  auto kind = GENERATE(NormKind::rmsnorm, NormKind::layernorm);
  INFO("norm " << (kind == NormKind::rmsnorm ? "rmsnorm" : "layernorm"));
  const int64_t tokens = 5, width = 7;
  ParamStore store;
  Norm norm = random_norm(store, kind, width);

  Tensor x = test::random_tensor({tokens, width}, DType::f64, 6, Device::cpu(), -2.0, 2.0);
  Tensor delta = test::random_tensor({tokens, width}, DType::f64, 8, Device::cpu(), -1.0, 1.0);
  auto wy = test::random_values(tokens * width, 7), wh = test::random_values(tokens * width, 9);
  // Both outputs carry gradient, as in a block: y feeds the FFN, h the residual stream.
  auto objective = [&]() {
    Norm::Saved s;
    Tensor h;
    Tensor y = norm.forward_add(x, delta, h, s);
    return weighted_sum(y, wy) + weighted_sum(h, wh);
  };

  store.zero_grads();
  Norm::Saved saved;
  Tensor h;
  norm.forward_add(x, delta, h, saved);
  Tensor dx = norm.backward(saved, f64_tensor(wy, {tokens, width}), f64_tensor(wh, {tokens, width}));
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_gradient(dx.to_vector<double>(), delta, objective, "ddelta");  // d(x + delta)/d delta = 1
  check_param_gradients(store, objective);
}

namespace {
// dx and every parameter gradient of attn (f64, batch sequences of seq tokens, x[T, d]) against finite
// differences of a weighted sum of its output; a second backward doubles the gradients.
void check_attention_gradients(const Attention& attn, ParamStore& store, int64_t batch, int64_t seq, int64_t d) {
  const int64_t tokens = batch * seq;
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 12);
  auto w = test::random_values(tokens * d, 13);
  auto objective = [&]() {
    Attention::Saved s;
    return weighted_sum(attn.forward(x, batch, s), w);
  };
  store.zero_grads();
  Attention::Saved saved;
  attn.forward(x, batch, saved);
  Tensor dy = f64_tensor(w, {tokens, d});
  Tensor dx = attn.backward(saved, dy, batch);
  check_gradient(dx.to_vector<double>(), x, objective, "dx");
  check_param_gradients(store, objective);
  auto first = snapshot_grads(store);
  attn.backward(saved, dy, batch);
  require_grads_doubled(store, first);
}

struct AttentionVariant {
  int64_t num_heads, num_kv_heads;
  bool rope;
};
}  // namespace

TEST_CASE("attention gradients match finite differences", "[model][gradcheck][module]") {
  auto v = GENERATE(AttentionVariant{4, 4, true}, AttentionVariant{4, 4, false}, AttentionVariant{4, 2, true},
                    AttentionVariant{4, 2, false}, AttentionVariant{4, 1, true});
  auto mask = GENERATE(AttentionMask::causal, AttentionMask::bidirectional);
  INFO("heads " << v.num_heads << " kv heads " << v.num_kv_heads << " rope " << v.rope << " mask "
                << attention_mask_name(mask));
  const int64_t batch = 2, seq = 5, d = 16;
  AttentionConfig cfg;
  cfg.d_model = d;
  cfg.num_heads = v.num_heads;
  cfg.num_kv_heads = v.num_kv_heads;
  cfg.seq_len = seq;
  cfg.rope = v.rope;
  cfg.mask = mask;
  cfg.init_std = k_init_std;
  cfg.out_init_std = k_init_std;
  ParamStore store;
  Attention attn(store, "attn", cfg);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(11);

  check_attention_gradients(attn, store, batch, seq, d);
}

namespace {
struct AttentionFeatures {
  const char* name;
  bool qkv_bias, out_bias, qk_norm;
  ops::RopeScalingKind scaling;
};
}  // namespace

TEST_CASE("attention with biases, QK-norm and rope scaling: gradients match finite differences",
          "[model][gradcheck][module]") {
  using K = ops::RopeScalingKind;
  auto f = GENERATE(AttentionFeatures{"qkv biases", true, false, false, K::none},
                    AttentionFeatures{"all biases", true, true, false, K::none},
                    AttentionFeatures{"qk_norm", false, false, true, K::none},
                    AttentionFeatures{"qk_norm + biases + linear rope", true, true, true, K::linear},
                    AttentionFeatures{"llama3 rope", false, false, false, K::llama3});
  INFO(f.name);
  const int64_t batch = 2, seq = 5, d = 16;
  AttentionConfig cfg;
  cfg.d_model = d;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.seq_len = seq;
  cfg.init_std = k_init_std;
  cfg.out_init_std = k_init_std;
  cfg.qkv_bias = f.qkv_bias;
  cfg.out_bias = f.out_bias;
  cfg.qk_norm = f.qk_norm;
  cfg.rope_scaling.kind = f.scaling;
  cfg.rope_scaling.factor = 4.0;
  cfg.rope_scaling.original_max_positions = 8.0;  // head_dim 4: wavelengths 2*pi and 2*pi*sqrt(theta)
  cfg.rope_theta = 16.0f;                         // pair 1's wavelength 25.1 lies in llama3's smoothed band
  cfg.rope_scaling.low_freq_factor = 0.25;
  cfg.rope_scaling.high_freq_factor = 1.0;
  ParamStore store;
  Attention attn(store, "attn", cfg);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(11);
  // Biases start at zeros and norm weights at ones: moved away so their forward use is checked too.
  uint64_t seed = 40;
  int num_extra = 0;
  for (size_t i = 0; i < store.infos().size(); ++i) {
    if (store.info(static_cast<ParamId>(i)).kind == ParamKind::norm_or_bias) {
      randomize_param(store, static_cast<ParamId>(i), ++seed, 0.5, 1.5);
      ++num_extra;
    }
  }
  REQUIRE(num_extra == (f.qkv_bias ? 3 : 0) + (f.out_bias ? 1 : 0) + (f.qk_norm ? 2 : 0));
  if (f.qkv_bias) REQUIRE(store.info(store.find("attn.bk")).numel() == 2 * 4);
  if (f.out_bias) REQUIRE(store.info(store.find("attn.bo")).numel() == d);
  if (f.qk_norm) REQUIRE(store.info(store.find("attn.k_norm.weight")).numel() == 2 * 4);

  check_attention_gradients(attn, store, batch, seq, d);
}

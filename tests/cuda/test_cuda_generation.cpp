// KV-cached generation on the GPU: the cache ops against the CPU reference (positioned rope,
// cache write, decode attention with GQA), decode_step logits against the full-window logits of
// the same tokens, and cached = full-window greedy tokens for a dense GQA model and an MoE model.
#include <catch2/catch.hpp>

#include "src/model/generation.h"
#include "src/ops/kv_cache_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

TEST_CASE("cuda kv cache ops match the CPU reference", "[cuda][generation]") {
  const int64_t batch = 3, heads = 8, kv_heads = 2, hd = 64, max_len = 37;
  const std::vector<int32_t> lengths = {1, 20, 37};
  Mirror k = random_mirror({batch * max_len, kv_heads * hd}, DType::bf16, 1);
  Mirror v = random_mirror({batch * max_len, kv_heads * hd}, DType::bf16, 2);
  std::vector<int32_t> positions;
  for (int64_t n = 0; n < batch * max_len; ++n) positions.push_back(static_cast<int32_t>(n % max_len));
  Mirror where = mirror_ids(positions, {batch * max_len});
  Mirror k_cache = poisoned_pair({batch, kv_heads, max_len, hd}, DType::bf16);
  Mirror v_cache = poisoned_pair({batch, kv_heads, max_len, hd}, DType::bf16);
  for (auto [rows, cache] : {std::pair{&k, &k_cache}, std::pair{&v, &v_cache}}) {
    ops::kv_cache_write(rows->cpu, where.cpu, cache->cpu);
    ops::kv_cache_write(rows->gpu, where.gpu, cache->gpu);
    require_match(*cache, bf16_tol(), "kv_cache_write");
  }
  Mirror q = random_mirror({batch, heads * hd}, DType::bf16, 3);
  Mirror at = mirror_ids({0, 19, 36}, {batch});
  ops::rope_at(q.cpu, heads, at.cpu, 10000.0f);
  ops::rope_at(q.gpu, heads, at.gpu, 10000.0f);
  require_match(q, bf16_tol(), "rope_at");
  q = mirror_of(q.cpu, DType::bf16);  // identical inputs for the attention
  Mirror lens = mirror_ids(lengths, {batch});
  Mirror out = poisoned_pair({batch, heads * hd}, DType::bf16);
  ops::decode_attention(q.cpu, k_cache.cpu, v_cache.cpu, lens.cpu, out.cpu);
  ops::decode_attention(q.gpu, k_cache.gpu, v_cache.gpu, lens.gpu, out.gpu);
  require_match(out, bf16_tol(), "decode_attention");
}

Config tiny_config(int64_t kv_heads, int64_t experts) {
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 64;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = kv_heads;
  c.model.seq_len = 24;
  c.model.d_ff = 64;
  c.model.init_std = 0.3;
  c.moe.num_experts = experts;  // dropless top-2
  c.moe.d_expert = 32;
  c.moe.first_dense = 1;
  validate_config(c);
  return c;
}

TEST_CASE("cuda decode steps give the full-window logits", "[cuda][generation]") {
  Config c = tiny_config(2, 4);
  Model model(c.model, c.moe);
  model.allocate(gpu(), DType::bf16);
  model.initialize(3);
  std::vector<int32_t> tokens = random_int_values(c.model.seq_len, c.model.vocab_size, 5);
  Tensor full = model.logits(tokens, 1);
  KvCache cache = model.make_kv_cache(1);
  std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 8);
  prompt.resize(static_cast<size_t>(c.model.seq_len), 0);
  model.prefill(prompt, cache);
  for (int64_t p = 8; p < c.model.seq_len; ++p) {
    Tensor step = model.decode_step({tokens[static_cast<size_t>(p)]}, {static_cast<int32_t>(p)}, cache);
    require_close(step, full.rows(p, p + 1), 0.05, 0.05, "decode_step logits at " + std::to_string(p));
  }
}

TEST_CASE("cuda cached generation gives the full-window tokens at temperature 0", "[cuda][generation]") {
  const std::vector<std::vector<int32_t>> prompts = {{3, 4, 5}, {7}, {9, 10, 11, 12, 13, 14}};
  for (auto [kv_heads, experts] : {std::pair<int64_t, int64_t>{4, 0}, {2, 0}, {2, 4}}) {
    INFO("kv heads " << kv_heads << " experts " << experts);
    Config c = tiny_config(kv_heads, experts);
    Model model(c.model, c.moe);
    model.allocate(gpu(), DType::bf16);
    model.initialize(7);
    GenerationOptions o;
    o.max_new_tokens = 10;
    o.sampling = {0, 1, 0};
    auto cached = generate(model, prompts, o);
    o.use_cache = false;
    auto reference = generate(model, prompts, o);
    for (size_t b = 0; b < prompts.size(); ++b) CHECK(cached[b].tokens == reference[b].tokens);
  }
}

}  // namespace
}  // namespace moe::test

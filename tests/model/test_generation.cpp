// Generation (src/model/generation.h): the KV-cached path gives the same tokens as the
// full-window reference at temperature 0 (dense, GQA, learned positions, MoE, a hash router, past
// seq_len), a batch the same tokens as each prompt alone, top-k = 1 equals greedy, a sink ends a
// sequence, and the cache refuses what it cannot serve; the KV-cache ops against attention_forward.
#include <catch2/catch.hpp>

#include "src/model/generation.h"
#include "src/ops/kv_cache_ops.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::random_values;
using Catch::Matchers::Contains;

namespace {

struct Shape4 {
  std::string positions = "rope";
  int64_t kv_heads = 4, experts = 0;
  std::string router = "softmax_topk";
};

Config tiny_config(const Shape4& s) {
  Config c;
  c.model.vocab_size = 29;
  c.model.d_model = 16;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = s.kv_heads;
  c.model.seq_len = 10;
  c.model.positions = s.positions;
  c.model.d_ff = 24;
  c.model.init_std = 0.6;
  c.moe.num_experts = s.experts;  // dropless: each token routed on its own
  c.moe.d_expert = 8;
  c.moe.router = s.router;
  c.moe.first_dense = 1;
  validate_config(c);
  return c;
}

struct TinyModel {
  Config config;
  std::unique_ptr<Model> model;
};

TinyModel tiny_model(const Shape4& s, DType dtype = DType::f64) {
  TinyModel t{tiny_config(s), nullptr};
  t.model = std::make_unique<Model>(t.config.model, t.config.moe);
  t.model->allocate(Device::cpu(), dtype);
  t.model->initialize(11);
  return t;
}

const std::vector<std::vector<int32_t>> k_prompts = {{3, 4, 5}, {7}, {9, 10, 11, 12, 13, 14}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}};

std::vector<std::vector<int32_t>> run(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                      bool cache, int64_t new_tokens = 14, SamplingOptions sampling = {0, 1, 0}) {
  GenerationOptions o;
  o.max_new_tokens = new_tokens;
  o.sampling = sampling;
  o.use_cache = cache;
  std::vector<std::vector<int32_t>> out;
  for (const Generated& g : generate(model, prompts, o)) out.push_back(g.tokens);
  return out;
}

}  // namespace

TEST_CASE("cached generation gives the full-window tokens at temperature 0", "[generation]") {
  // 14 new tokens after prompts of 1..12 with seq_len 10: every sequence also outgrows the cache.
  for (const Shape4& s : {Shape4{}, Shape4{"rope", 2}, Shape4{"rope", 1}, Shape4{"learned", 2},
                          Shape4{"rope", 2, 4}, Shape4{"learned", 4, 4, "hash"}, Shape4{"rope", 2, 4, "sigmoid"}}) {
    INFO(s.positions << " kv heads " << s.kv_heads << " experts " << s.experts << " router " << s.router);
    TinyModel t = tiny_model(s);
    const auto cached = run(*t.model, k_prompts, true), reference = run(*t.model, k_prompts, false);
    CHECK(cached == reference);
    for (const auto& tokens : cached) CHECK(tokens.size() == 14);
  }
}

TEST_CASE("a batch generates what each prompt generates alone", "[generation]") {
  for (bool cache : {true, false}) {
    TinyModel t = tiny_model(Shape4{"rope", 2, 4});
    const auto batched = run(*t.model, k_prompts, cache);
    for (size_t b = 0; b < k_prompts.size(); ++b) CHECK(run(*t.model, {k_prompts[b]}, cache)[0] == batched[b]);
  }
}

TEST_CASE("top-k = 1 is greedy at any temperature", "[generation]") {
  TinyModel t = tiny_model(Shape4{"rope", 2});
  CHECK(run(*t.model, k_prompts, true, 8, {1.5, 1.0, 1}) == run(*t.model, k_prompts, true, 8, {0, 1.0, 0}));
}

TEST_CASE("a sink ends its sequence; EOS ends it without being returned", "[generation]") {
  TinyModel t = tiny_model(Shape4{});
  const auto free_run = run(*t.model, k_prompts, true, 6);
  GenerationOptions o;
  o.max_new_tokens = 6;
  o.sampling = {0, 1, 0};
  // Sequence 0 stops after its second token; the others run on unchanged.
  auto sink = [](size_t b, int32_t) {
    static std::vector<int> seen(4, 0);
    return !(b == 0 && ++seen[b] == 2);
  };
  auto out = generate(*t.model, k_prompts, o, sink);
  CHECK(out[0].reason == StopReason::stop);
  CHECK(out[0].tokens == std::vector<int32_t>(free_run[0].begin(), free_run[0].begin() + 2));
  for (size_t b = 1; b < out.size(); ++b) {
    CHECK(out[b].tokens == free_run[b]);
    CHECK(out[b].reason == StopReason::length);
  }
  o.eos_id = free_run[1][2];  // sequence 1's third token becomes EOS
  out = generate(*t.model, {k_prompts[1]}, o);
  CHECK(out[0].reason == StopReason::eos);
  CHECK(out[0].tokens == std::vector<int32_t>(free_run[1].begin(), free_run[1].begin() + 2));
}

TEST_CASE("the cache refuses what it cannot serve, naming it", "[generation]") {
  Config c = tiny_config(Shape4{"rope", 2, 4});
  c.moe.router = "expert_choice";
  c.moe.capacity_factor = 1.0;
  Model ec(c.model, c.moe);
  ec.allocate(Device::cpu(), DType::f64);
  CHECK_THROWS_WITH(ec.make_kv_cache(1), Contains("router 'expert_choice' lets experts choose among all tokens") &&
                                            Contains("--no-cache"));
  c = tiny_config(Shape4{"rope", 2, 4, "hash"});
  c.moe.hash_kind = "position";
  Model hashed(c.model, c.moe);
  CHECK_THROWS_WITH(hashed.make_kv_cache(1), Contains("moe.hash_kind = 'position'"));
  c = tiny_config(Shape4{});
  c.model.reset_positions = true;
  Model reset(c.model, c.moe);
  CHECK_THROWS_WITH(reset.make_kv_cache(1), Contains("model.reset_positions"));
}

TEST_CASE("decode attention over a written cache equals causal attention's last rows", "[generation][ops]") {
  const int64_t batch = 2, seq = 7, heads = 4, kv_heads = 2, hd = 6;
  Tensor q = Tensor::from_vector(random_values(batch * seq * heads * hd, 1), {batch * seq, heads * hd}, DType::f64);
  Tensor k = Tensor::from_vector(random_values(batch * seq * kv_heads * hd, 2), {batch * seq, kv_heads * hd}, DType::f64);
  Tensor v = Tensor::from_vector(random_values(batch * seq * kv_heads * hd, 3), {batch * seq, kv_heads * hd}, DType::f64);
  Tensor out = Tensor::empty(q.shape(), DType::f64), lse = Tensor::empty({batch, heads, seq}, DType::f64);
  ops::attention_forward(q, k, v, out, lse, {batch, seq, heads, kv_heads, hd, true});
  Tensor k_cache = Tensor::zeros({batch, kv_heads, seq + 3, hd}, DType::f64), v_cache = Tensor::zeros(k_cache.shape(), DType::f64);
  std::vector<int32_t> positions;
  for (int64_t n = 0; n < batch * seq; ++n) positions.push_back(static_cast<int32_t>(n % seq));
  Tensor where = Tensor::from_vector(positions, {batch * seq}, DType::i32);
  ops::kv_cache_write(k, where, k_cache);
  ops::kv_cache_write(v, where, v_cache);
  for (int64_t p = 0; p < seq; ++p) {  // the query of position p against the first p + 1 keys
    Tensor rows = Tensor::empty({batch, heads * hd}, DType::f64), got = Tensor::empty({batch, heads * hd}, DType::f64);
    std::vector<double> want;
    for (int64_t b = 0; b < batch; ++b) {
      rows.rows(b, b + 1).copy_from(q.rows(b * seq + p, b * seq + p + 1));
      for (double x : out.rows(b * seq + p, b * seq + p + 1).to_vector<double>()) want.push_back(x);
    }
    Tensor lengths = Tensor::from_vector(std::vector<int32_t>(batch, static_cast<int32_t>(p + 1)), {batch}, DType::i32);
    ops::decode_attention(rows, k_cache, v_cache, lengths, got);
    const auto have = got.to_vector<double>();
    for (size_t i = 0; i < want.size(); ++i) CHECK(have[i] == Approx(want[i]).margin(1e-12));
  }
  Tensor bad = Tensor::from_vector(std::vector<int32_t>{0, 0}, {2}, DType::i32), q1 = Tensor::zeros({batch, heads * hd}, DType::f64);
  Tensor o1 = Tensor::empty(q1.shape(), DType::f64);
  CHECK_THROWS_WITH(ops::decode_attention(q1, k_cache, v_cache, bad, o1), Contains("sequence 0 has length 0"));
}

TEST_CASE("rope_at equals rope at the row's position", "[generation][ops]") {
  const int64_t seq = 5, heads = 2, hd = 8;
  Tensor x = Tensor::from_vector(random_values(seq * heads * hd, 4), {seq, heads * hd}, DType::f64);
  Tensor whole = x.clone();
  ops::rope(whole, heads, seq, 10000.0f, false);
  for (int64_t p = 0; p < seq; ++p) {
    Tensor row = x.rows(p, p + 1).clone();
    ops::rope_at(row, heads, Tensor::from_vector(std::vector<int32_t>{static_cast<int32_t>(p)}, {1}, DType::i32), 10000.0f);
    CHECK(row.to_vector<double>() == whole.rows(p, p + 1).to_vector<double>());
  }
}

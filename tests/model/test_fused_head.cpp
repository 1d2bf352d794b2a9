// The chunked LM head with its gradient made in forward (Model::set_head_chunk, train.head_chunk_tokens):
// the same per-token losses, target count, input gradient and parameter gradients as the head that
// keeps its logits for backward, for tied and untied heads, ignored targets, chunk sizes that do
// and do not divide the tokens, and two micro-batches accumulating; no logits are kept; a backward
// with another loss scale is refused.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "src/model/model.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

Config head_config(bool tied) {
  Config c;
  c.model.vocab_size = 64;  // 10 tokens x 64 logits outweigh the [64, 8] head gradient (head_chunk_gains)
  c.model.d_model = 8;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 5;
  c.model.d_ff = 12;
  c.model.init_std = 0.5;
  c.model.tie_embeddings = tied;
  c.moe.num_experts = 4;
  c.moe.d_expert = 6;
  c.moe.first_dense = 1;
  c.moe.aux_loss_coef = 0.01;
  validate_config(c);
  return c;
}

// Two sequences of 5 tokens: 10 rows; every third target ignored (-1).
Batch head_batch(const Config& c, uint64_t seed) {
  const int64_t n = 2 * c.model.seq_len;
  std::vector<int32_t> inputs, targets;
  for (double v : test::random_values(n, seed)) inputs.push_back(static_cast<int32_t>(std::abs(v) * 1000) % 64);
  for (double v : test::random_values(n, seed + 1)) targets.push_back(static_cast<int32_t>(std::abs(v) * 1000) % 64);
  for (size_t i = 0; i < targets.size(); i += 3) targets[i] = -1;
  return make_batch(inputs, targets, 2, Device::cpu());
}

struct Result {
  std::vector<double> losses, grads;
  int64_t num_targets = 0;
  bool kept_logits = false;
};

// Forward and backward of two micro-batches (accumulating), the head chunked by `chunk` (0 = not).
Result run(const Config& c, int64_t chunk) {
  Model model(c.model, c.moe);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(5);
  model.set_head_chunk(chunk);
  model.params().zero_grads();
  const float loss_scale = 1.0f / 14;
  Result r;
  for (uint64_t seed : {31u, 47u}) {
    const Batch batch = head_batch(c, seed);
    ModelSaved saved;
    saved.head_grad_scale = loss_scale;
    ForwardOutput out = model.forward(batch, saved);
    const std::vector<double> loss = out.loss.to_vector<double>();
    r.losses.insert(r.losses.end(), loss.begin(), loss.end());
    r.num_targets += out.num_targets;
    r.kept_logits = r.kept_logits || saved.logits.defined();
    model.backward(batch, saved, loss_scale, 0.5f);
  }
  for (int g = 0; g < k_num_param_groups; ++g) {
    const std::vector<double> part = model.params().flat_grads(static_cast<ParamGroup>(g)).to_vector<double>();
    r.grads.insert(r.grads.end(), part.begin(), part.end());
  }
  return r;
}

}  // namespace

TEST_CASE("the chunked head makes the losses and gradients of the head that keeps its logits", "[model][head]") {
  const bool tied = GENERATE(true, false);
  const int64_t chunk = GENERATE(int64_t{1}, int64_t{3}, int64_t{5}, int64_t{64});
  INFO((tied ? "tied" : "untied") << " head, chunks of " << chunk << " tokens");
  const Config c = head_config(tied);
  const Result kept = run(c, 0), fused = run(c, chunk);
  REQUIRE(kept.kept_logits);
  REQUIRE_FALSE(fused.kept_logits);
  REQUIRE(fused.num_targets == kept.num_targets);
  REQUIRE(kept.num_targets == 12);  // 20 targets, 8 ignored
  test::require_close(fused.losses, kept.losses, 1e-12, 1e-12, "per-token losses");
  test::require_close(fused.grads, kept.grads, 1e-12, 1e-12, "parameter gradients");
  REQUIRE(test::max_abs(fused.grads) > 1e-3);
}

TEST_CASE("a head gradient made in forward is not used with another loss scale", "[model][head][errors]") {
  const Config c = head_config(true);
  Model model(c.model, c.moe);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(5);
  model.set_head_chunk(4);
  const Batch batch = head_batch(c, 31);
  ModelSaved saved;
  saved.head_grad_scale = 0.25f;
  model.forward(batch, saved);
  REQUIRE(saved.d_hidden.defined());
  REQUIRE_THROWS_WITH(model.backward(batch, saved, 0.5f, 1.0f),
                      Contains("backward with loss scale 0.5, but the head's gradient was made in forward with 0.25"));
  // Without a loss scale the forward is an evaluation's: the logits are kept, no gradient is made.
  ModelSaved eval;
  model.forward(batch, eval);
  REQUIRE(eval.logits.defined());
  REQUIRE_FALSE(eval.d_hidden.defined());
  REQUIRE_THROWS_WITH(model.set_head_chunk(-1), Contains("train.head_chunk_tokens must be >= 0"));
}

TEST_CASE("the chunked head is not used where it would keep more than the logits", "[model][head]") {
  // 10 tokens x 64 logits in f64 (5120 bytes) against a [64, 8] head gradient and d hidden (4736):
  // chunked; a vocabulary of 16 (1280 against 1664): the logits are kept.
  REQUIRE(head_chunk_gains(10, 64, 8, 8, 8));
  REQUIRE_FALSE(head_chunk_gains(10, 16, 8, 8, 8));
  Config c = head_config(true);
  c.model.vocab_size = 16;
  Model model(c.model, c.moe);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(5);
  model.set_head_chunk(4);
  std::vector<int32_t> ids(10, 3);
  const Batch batch = make_batch(ids, ids, 2, Device::cpu());
  ModelSaved saved;
  saved.head_grad_scale = 0.25f;
  model.forward(batch, saved);
  REQUIRE(saved.logits.defined());
  REQUIRE_FALSE(saved.d_hidden.defined());
}

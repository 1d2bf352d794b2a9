// Masked LM training on the CPU: a small MoE encoder lowers its loss on the masked positions and
// raises its masked-token accuracy; a resume continues bit-identically (the masks included); a
// tokenizer without [MASK] is refused naming the piece.
#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "parallel/communicator.h"
#include "src/data/token_shard.h"
#include "src/train/trainer.h"
#include "tests/train/objective_train_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

Config masked_lm_config(const test::TempDir& dir) {
  Config c = test::tiny_train_config(dir);
  c.model.seq_len = 16;
  test::use_masked_lm(c, dir);
  return c;
}

// Documents of 64 tokens that end with </s> (id 2), each drawn from one of 4 topics (ids 8 + 6t ..
// 8 + 6t + 5): a pair's B shares A's topic when it follows A, and only by chance (1 in 4) when it
// starts another document, so next-sentence prediction is learnable.
void write_topic_shard(const std::string& path, int64_t num_docs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> tokens;
  for (int64_t d = 0; d < num_docs; ++d) {
    const uint32_t topic = static_cast<uint32_t>(rng() % 4);
    for (int i = 0; i < 63; ++i) tokens.push_back(8 + 6 * topic + static_cast<uint32_t>(rng() % 6));
    tokens.push_back(2);
  }
  data::write_token_shard(path, tokens, data::TokenDType::u16);
}

}  // namespace

TEST_CASE("next-sentence prediction learns which pairs follow one another", "[train][masked_lm][nsp]") {
  test::TempDir dir("moe-nsp-train");
  Config c = masked_lm_config(dir);
  write_topic_shard(dir.str("train.tok"), 200, 3);
  write_topic_shard(dir.str("val.tok"), 40, 4);
  c.objective.nsp = true;
  c.model.eos_id = 2;
  c.train.steps = 300;
  c.train.micro_batch_size = 16;
  c.train.log_every = 10;
  c.train.eval_every = 300;
  c.train.eval_batches = 8;
  validate_config(c);
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  const EvalResult untrained = trainer.evaluate(8);
  REQUIRE(untrained.nsp_accuracy >= 0);
  trainer.train();
  const auto steps = test::read_records(c.train.run_dir + "/metrics.jsonl", "loss");
  REQUIRE(steps.front().contains("nsp_accuracy"));
  REQUIRE(steps.front()["nsp_loss"].get<double>() < steps.front()["loss"].get<double>());  // part of the loss
  const EvalResult trained = trainer.evaluate(8);
  INFO("nsp accuracy " << untrained.nsp_accuracy << " -> " << trained.nsp_accuracy << ", loss " << untrained.nsp_loss
                       << " -> " << trained.nsp_loss);
  REQUIRE(trained.nsp_accuracy > 0.65);  // 128 pairs: chance is 0.5 +- 0.045
  REQUIRE(trained.nsp_loss < untrained.nsp_loss - 0.1);
  const auto evals = test::read_records(c.train.run_dir + "/metrics.jsonl", "val_loss");
  REQUIRE(evals.back()["val_nsp_accuracy"].get<double>() == Approx(trained.nsp_accuracy));
}

TEST_CASE("a masked LM MoE encoder lowers its loss and raises its masked-token accuracy", "[train][masked_lm]") {
  test::TempDir dir("moe-mlm-train");
  Config c = masked_lm_config(dir);
  c.train.steps = 800;
  c.train.micro_batch_size = 16;  // 32 masked positions a step
  c.train.eval_every = 400;
  c.train.eval_batches = 2;
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  REQUIRE(trainer.model().objective().attention_mask() == AttentionMask::bidirectional);
  const EvalResult untrained = trainer.evaluate(2);
  // 2 batches of 16 windows, round(0.15 * 16) = 2 masked positions each.
  REQUIRE(untrained.tokens == 2 * 16 * 2);
  REQUIRE(untrained.accuracy >= 0);
  trainer.train();
  const auto steps = test::read_records(c.train.run_dir + "/metrics.jsonl", "loss");
  REQUIRE(steps.size() == 800);
  double first10 = 0, last10 = 0;
  for (size_t i = 0; i < 10; ++i) first10 += steps[i]["loss"].get<double>() / 10;
  for (size_t i = 790; i < 800; ++i) last10 += steps[i]["loss"].get<double>() / 10;
  REQUIRE(last10 < first10 - 0.5);
  const auto evals = test::read_records(c.train.run_dir + "/metrics.jsonl", "val_loss");
  REQUIRE(evals.size() == 2);
  REQUIRE(evals.back().contains("val_accuracy"));
  const EvalResult trained = trainer.evaluate(2);
  REQUIRE(trained.loss == Approx(evals.back()["val_loss"].get<double>()));
  REQUIRE(trained.loss < untrained.loss - 0.5);
  REQUIRE(trained.accuracy > untrained.accuracy + 0.2);
}

TEST_CASE("a resumed masked LM run draws the same masks and continues bit-identically", "[train][masked_lm]") {
  test::TempDir dir("moe-mlm-resume");
  Config c = masked_lm_config(dir);
  test::require_bit_identical_resume(c, dir);
}

TEST_CASE("masked LM refuses a tokenizer without [MASK], naming the piece", "[train][masked_lm][errors]") {
  test::TempDir dir("moe-mlm-no-mask");
  Config c = masked_lm_config(dir);
  c.data.tokenizer = test::write_special_tokenizer(dir, false);
  auto world = make_world_communicator(Device::cpu());
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world),
                      Contains("plain.model (data.tokenizer) has no [MASK] piece, which model.objective = 'masked_lm' "
                               "needs: make the tokenizer with `moe tokenize --special-tokens`"));
  // The reserved pieces of --special-tokens are found by name, in order after </s>.
  const data::Tokenizer special = data::Tokenizer::load(test::write_special_tokenizer(dir));
  REQUIRE(special.piece_id("[MASK]") == 3);
  REQUIRE(special.piece_id("[CLS]") == 4);
  REQUIRE(special.piece_id("[SEP]") == 5);
  REQUIRE(special.piece_id("<extra_id_1>") == 7);
  REQUIRE(special.piece_id("<extra_id_2>") == -1);
  // Text never encodes to a reserved piece.
  for (int32_t id : special.encode("[MASK] kalo [SEP]")) REQUIRE(id > 7);
}

// Span-corruption training on the CPU: a small MoE encoder-decoder lowers its loss on the targets
// (training and evaluation); a resume continues bit-identically (the noise masks included); a
// tokenizer without the sentinels is refused naming the piece; the encoder-decoder generates.
#include <catch2/catch.hpp>

#include "parallel/communicator.h"
#include "src/model/span_filling.h"
#include "src/tools/span_text.h"
#include "src/train/trainer.h"
#include "tests/train/objective_train_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

// 1 + 1 MoE layers; 16 encoder positions read raw windows of 17 tokens with 3 noise tokens in 1
// span: a target of 5 (sentinel, 3 tokens, EOS).
Config span_config(const test::TempDir& dir) {
  Config c = test::tiny_train_config(dir);
  c.model.seq_len = 16;
  test::use_span_corruption(c, dir);
  return c;
}

}  // namespace

TEST_CASE("a span-corruption MoE encoder-decoder lowers its loss", "[train][span]") {
  test::TempDir dir("moe-span-train");
  Config c = span_config(dir);
  REQUIRE(c.model.decoder_seq_len == 5);
  c.train.steps = 300;
  c.train.micro_batch_size = 8;
  c.train.eval_every = 150;
  c.train.eval_batches = 2;
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  REQUIRE(trainer.model().is_encoder_decoder());
  REQUIRE(trainer.model().num_moe_layers() == 2);
  const EvalResult untrained = trainer.evaluate(2);
  REQUIRE(untrained.tokens == 2 * 8 * 5);  // 2 batches of 8 windows, 5 target positions each
  REQUIRE(untrained.accuracy < 0);  // not reported
  trainer.train();
  const auto steps = test::read_records(c.train.run_dir + "/metrics.jsonl", "loss");
  REQUIRE(steps.size() == 300);
  REQUIRE(steps[0]["moe"].size() == 2);  // the encoder's MoE layer and the decoder's
  double first10 = 0, last10 = 0;
  for (size_t i = 0; i < 10; ++i) first10 += steps[i]["loss"].get<double>() / 10;
  for (size_t i = 290; i < 300; ++i) last10 += steps[i]["loss"].get<double>() / 10;
  REQUIRE(last10 < first10 - 0.5);
  const auto evals = test::read_records(c.train.run_dir + "/metrics.jsonl", "val_loss");
  REQUIRE(evals.size() == 2);
  const EvalResult trained = trainer.evaluate(2);
  REQUIRE(trained.loss == Approx(evals.back()["val_loss"].get<double>()));
  REQUIRE(trained.loss < untrained.loss - 0.5);

  // Span filling: greedy decoding of validation inputs. Every target starts with <extra_id_0>, which
  // the trained decoder has learned; a batch decodes as each input alone.
  const data::Tokenizer tokenizer = data::Tokenizer::load(c.data.tokenizer);
  const int32_t sentinel0 = tokenizer.piece_id("<extra_id_0>");
  const Objective& objective = trainer.model().objective();
  const data::TokenDataset val = data::TokenDataset::open(dir.str("val.tok"));
  data::TokenWindows windows = data::read_windows(val, objective.window_seq_len(c.model.seq_len), {0, 40, 80, 120});
  windows.keys = {data::eval_window_key(0), data::eval_window_key(1), data::eval_window_key(2), data::eval_window_key(3)};
  std::vector<int32_t> in, tg;
  objective.build(windows, in, tg);
  std::vector<std::vector<int32_t>> inputs;
  for (int64_t w = 0; w < 4; ++w) inputs.emplace_back(in.begin() + w * c.model.seq_len, in.begin() + (w + 1) * c.model.seq_len);
  GenerationOptions greedy;
  greedy.sampling.temperature = 0;
  greedy.eos_id = static_cast<int32_t>(c.model.eos_id);
  const std::vector<Generated> batch = fill_spans(trainer.model(), inputs, greedy);
  REQUIRE(batch.size() == 4);
  for (size_t b = 0; b < batch.size(); ++b) {
    REQUIRE(!batch[b].tokens.empty());
    REQUIRE(batch[b].tokens.size() <= static_cast<size_t>(c.model.decoder_seq_len));
    REQUIRE(batch[b].tokens[0] == sentinel0);
    REQUIRE(fill_spans(trainer.model(), {inputs[b]}, greedy)[0].tokens == batch[b].tokens);
  }
  REQUIRE_THROWS_WITH(trainer.model().logits(inputs[0], 1), Contains("makes an encoder-decoder: it fills the sentinel "
                                                                     "spans of a corrupted input"));
}

TEST_CASE("span-filling text: markers become sentinels, spans replace the markers", "[train][span][generate]") {
  test::TempDir dir("moe-span-text");
  const data::Tokenizer tokenizer = data::Tokenizer::load(test::write_special_tokenizer(dir));
  const CorruptedText c = encode_corrupted(tokenizer, "kalo <extra_id_0> mine <extra_id_1>", 2);
  REQUIRE(c.sentinels == std::vector<int32_t>{6, 7});
  std::vector<int32_t> expected = tokenizer.encode("kalo ");
  expected.push_back(6);
  const std::vector<int32_t> middle = tokenizer.encode(" mine ");
  expected.insert(expected.end(), middle.begin(), middle.end());
  expected.push_back(7);
  expected.push_back(2);
  REQUIRE(c.ids == expected);
  const auto spans = target_spans({6, 10, 11, 7, 12}, c.sentinels);  // fill_spans drops the EOS
  REQUIRE(spans == std::vector<std::vector<int32_t>>{{10, 11}, {12}});
  REQUIRE(fill_markers(tokenizer, "kalo <extra_id_0> mine <extra_id_1>.", {tokenizer.encode("su"), {}}) ==
          "kalo " + tokenizer.decode(tokenizer.encode("su")) + " mine .");
  REQUIRE_THROWS_WITH(encode_corrupted(tokenizer, "kalo mine", 2), Contains("has none"));
  REQUIRE_THROWS_WITH(encode_corrupted(tokenizer, "kalo <extra_id_5>", 2), Contains("has no <extra_id_5> piece"));
}

TEST_CASE("a resumed span-corruption run draws the same spans and continues bit-identically", "[train][span]") {
  test::TempDir dir("moe-span-resume");
  Config c = span_config(dir);
  test::require_bit_identical_resume(c, dir);
}

TEST_CASE("span corruption refuses a tokenizer without the sentinels, naming the piece", "[train][span][errors]") {
  test::TempDir dir("moe-span-no-sentinel");
  Config c = span_config(dir);
  c.data.tokenizer = test::write_special_tokenizer(dir, false);
  auto world = make_world_communicator(Device::cpu());
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world),
                      Contains("plain.model (data.tokenizer) has no <extra_id_0> piece, which model.objective = "
                               "'span_corruption' needs: make the tokenizer with `moe tokenize --special-tokens`"));
}

// The masked LM objective (BERT): masking rates measured over many sequences, no target visible
// in its input beyond the unchanged share, layout-independent seeded choices, the loss count, its
// bidirectional model, and the errors naming what is missing.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include "src/data/batch_sampler.h"
#include "src/model/masked_lm.h"
#include "src/model/model.h"
#include "tests/data/data_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;
using Catch::StartsWith;

namespace {

constexpr int32_t k_mask = 3;

ObjectiveOptions options(int64_t vocab, double mask_token_rate = 0.8, double random_token_rate = 0.1) {
  ObjectiveOptions o;
  o.rates.mask_token_rate = mask_token_rate;
  o.rates.random_token_rate = random_token_rate;
  o.tokens.mask = k_mask;
  o.vocab_size = vocab;
  o.seed = 1234;
  return o;
}

// rows windows of seq_len + 1 random tokens in [4, vocab) (never [MASK]), keys from `first`.
data::TokenWindows random_windows(int64_t rows, int64_t seq_len, int64_t vocab, uint64_t seed, int64_t first = 0) {
  data::TokenWindows w;
  w.rows = rows;
  w.seq_len = seq_len;
  data::SplitMix64 rng(seed);
  for (int64_t i = 0; i < rows * w.window_length(); ++i) {
    w.tokens.push_back(4 + static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab - 4))));
  }
  for (int64_t r = 0; r < rows; ++r) {
    w.starts.push_back(0);
    w.keys.push_back(data::global_sample_key(first + r));
  }
  return w;
}

}  // namespace

TEST_CASE("masked LM selects 15% of each sequence, and of those 80% [MASK], 10% random, 10% unchanged",
          "[model][objective][masked_lm]") {
  const int64_t rows = 4000, seq_len = 64, vocab = 5000;
  MaskedLm mlm(options(vocab));
  const data::TokenWindows w = random_windows(rows, seq_len, vocab, 11);
  std::vector<int32_t> inputs, targets;
  mlm.build(w, inputs, targets);
  REQUIRE(mlm.loss_positions(seq_len) == 10);  // round(0.15 * 64)
  int64_t masked = 0, random = 0, unchanged = 0;
  std::vector<int64_t> per_position(static_cast<size_t>(seq_len), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t selected = 0;
    for (int64_t t = 0; t < seq_len; ++t) {
      const size_t i = static_cast<size_t>(r * seq_len + t);
      const int32_t original = w.window(r)[t];
      if (targets[i] < 0) {
        REQUIRE(targets[i] == -1);
        REQUIRE(inputs[i] == original);  // not selected: shown as it is, not counted
        continue;
      }
      ++selected;
      ++per_position[static_cast<size_t>(t)];
      REQUIRE(targets[i] == original);
      if (inputs[i] == k_mask) ++masked;
      else if (inputs[i] == original) ++unchanged;
      else ++random;
      REQUIRE(inputs[i] >= 0);
      REQUIRE(inputs[i] < vocab);
    }
    REQUIRE(selected == 10);  // exactly, every sequence
  }
  const double n = static_cast<double>(rows * 10);
  // 40000 selections: the standard error of a share p is sqrt(p(1-p)/n) <= 0.0025; 4 of them.
  CHECK(static_cast<double>(masked) / n == Approx(0.8).margin(0.01));
  CHECK(static_cast<double>(random) / n == Approx(0.1).margin(0.01));
  CHECK(static_cast<double>(unchanged) / n == Approx(0.1).margin(0.01));
  // Every position is equally likely: 4000 * 10/64 = 625 each, sd ~23; 5 sd.
  for (int64_t count : per_position) CHECK(std::abs(static_cast<double>(count) - 625.0) < 115.0);
}

TEST_CASE("masked LM rates follow [objective]; a random replacement is uniform over the vocabulary",
          "[model][objective][masked_lm]") {
  ObjectiveOptions o = options(50, 0.5, 0.5);
  o.rates.mask_rate = 0.25;
  MaskedLm mlm(o);
  const data::TokenWindows w = random_windows(3000, 40, 50, 12);
  std::vector<int32_t> inputs, targets;
  mlm.build(w, inputs, targets);
  REQUIRE(mlm.loss_positions(40) == 10);
  std::vector<int64_t> drawn(50, 0);
  int64_t masked = 0, replaced = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (targets[i] < 0) continue;
    if (inputs[i] == k_mask) {
      ++masked;
    } else {
      ++replaced;
      ++drawn[static_cast<size_t>(inputs[i])];  // a random draw, which may equal the original
    }
  }
  CHECK(static_cast<double>(masked) / static_cast<double>(masked + replaced) == Approx(0.5).margin(0.015));
  // ~15000 draws over 50 ids ([MASK] = 3 among them, counted as masked): ~300 each.
  for (int32_t id = 0; id < 50; ++id) {
    if (id != k_mask) CHECK(std::abs(static_cast<double>(drawn[static_cast<size_t>(id)]) - 300.0) < 90.0);
  }
}

TEST_CASE("no masked LM target leaks into its input", "[model][objective][masked_lm]") {
  // With only [MASK] replacements the inputs do not depend on the targets at all: windows that
  // differ at every selected position give identical inputs (and different targets).
  const int64_t rows = 200, seq_len = 32, vocab = 1000;
  MaskedLm mlm(options(vocab, 1.0, 0.0));
  data::TokenWindows w = random_windows(rows, seq_len, vocab, 21);
  std::vector<int32_t> inputs, targets;
  mlm.build(w, inputs, targets);
  data::TokenWindows changed = w;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const size_t i = static_cast<size_t>(r * seq_len + t);
      if (targets[i] >= 0) changed.tokens[static_cast<size_t>(r * w.window_length() + t)] = 4 + (targets[i] + 1) % 996;
    }
  }
  std::vector<int32_t> inputs2, targets2;
  mlm.build(changed, inputs2, targets2);
  REQUIRE(inputs2 == inputs);
  REQUIRE(targets2 != targets);
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (targets[i] >= 0) REQUIRE(inputs[i] == k_mask);
  }
  // With the BERT rates, a selected target is visible at its own position only in the unchanged
  // share (10%, plus a random draw hitting it: 0.1/996), never more.
  MaskedLm bert(options(vocab));
  const data::TokenWindows many = random_windows(4000, seq_len, vocab, 22);
  bert.build(many, inputs, targets);
  int64_t visible = 0, selected = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (targets[i] < 0) continue;
    ++selected;
    visible += inputs[i] == targets[i];
  }
  CHECK(static_cast<double>(visible) / static_cast<double>(selected) == Approx(0.1).margin(0.01));
}

TEST_CASE("masked LM choices depend on the sample key and the seed only", "[model][objective][masked_lm]") {
  MaskedLm mlm(options(500));
  const data::TokenWindows whole = random_windows(8, 16, 500, 31);
  std::vector<int32_t> inputs, targets;
  mlm.build(whole, inputs, targets);
  // The same windows in two parts (a micro-batch each, as on two data-parallel ranks).
  data::TokenWindows first = whole, second = whole;
  first.rows = second.rows = 4;
  first.tokens.resize(static_cast<size_t>(4 * whole.window_length()));
  second.tokens.erase(second.tokens.begin(), second.tokens.begin() + 4 * whole.window_length());
  first.keys.resize(4);
  second.keys.erase(second.keys.begin(), second.keys.begin() + 4);
  std::vector<int32_t> in1, t1, in2, t2;
  mlm.build(first, in1, t1);
  mlm.build(second, in2, t2);
  in1.insert(in1.end(), in2.begin(), in2.end());
  t1.insert(t1.end(), t2.begin(), t2.end());
  REQUIRE(in1 == inputs);
  REQUIRE(t1 == targets);
  // Another key (another step's sample) or another seed: other choices.
  data::TokenWindows later = whole;
  for (auto& key : later.keys) key = data::global_sample_key(1000 + static_cast<int64_t>(&key - later.keys.data()));
  std::vector<int32_t> in3, t3;
  mlm.build(later, in3, t3);
  REQUIRE(t3 != targets);
  ObjectiveOptions other = options(500);
  other.seed = 99;
  MaskedLm reseeded(other);
  reseeded.build(whole, in3, t3);
  REQUIRE(t3 != targets);
}

TEST_CASE("training samplers and evaluation give every window its own key", "[model][objective][masked_lm]") {
  test::TempDir dir;
  std::vector<uint32_t> tokens(4000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i % 300);
  data::write_token_shard(dir.file("t.tok"), tokens, data::TokenDType::u16);
  const auto ds = data::TokenDataset::open(dir.file("t.tok"));
  data::BatchSampler sampler(ds, 5, 8, 16);
  const data::TokenWindows step3 = sampler.global(3);
  REQUIRE(step3.keys.size() == 8);
  for (int64_t j = 0; j < 8; ++j) REQUIRE(step3.keys[static_cast<size_t>(j)] == data::global_sample_key(3 * 8 + j));
  // A rank's micro-batch carries the keys of its global sequences.
  const data::TokenWindows micro = sampler.micro_batch(3, {1, 2, 2, 2}, 1);
  REQUIRE(micro.keys == std::vector<uint64_t>(step3.keys.begin() + 6, step3.keys.end()));
  data::EvalIterator it(ds, 4, 16);
  data::TokenWindows eval;
  REQUIRE(it.next(eval));
  REQUIRE(eval.keys.size() == 4);
  REQUIRE(eval.keys[2] == data::eval_window_key(2));
  REQUIRE(std::set<uint64_t>(eval.keys.begin(), eval.keys.end()).count(data::global_sample_key(2)) == 0);
}

TEST_CASE("masked LM errors name what is missing", "[model][objective][masked_lm][errors]") {
  ObjectiveOptions no_mask = options(100);
  no_mask.tokens.mask = -1;
  std::vector<int32_t> inputs, targets;
  REQUIRE_THROWS_WITH(MaskedLm(no_mask).build(random_windows(2, 8, 100, 1), inputs, targets),
                      StartsWith("masked_lm: the [MASK] id is unknown (set data.tokenizer"));
  data::TokenWindows keyless = random_windows(2, 8, 100, 1);
  keyless.keys.clear();
  REQUIRE_THROWS_WITH(MaskedLm(options(100)).build(keyless, inputs, targets),
                      StartsWith("masked_lm: 0 window keys for 2 windows"));
  ObjectiveOptions bad = options(100, 0.8, 0.3);
  REQUIRE_THROWS_WITH(MaskedLm{bad}, Contains("must be >= 0 with a sum of at most 1"));
  // The options of a masked LM config without a tokenizer: the missing piece is named.
  Config c;
  c.model.objective = "masked_lm";
  REQUIRE_THROWS_WITH(objective_options(c, nullptr), StartsWith("model.objective = 'masked_lm' needs the id of "
                                                                  "[MASK]: set data.tokenizer"));
  REQUIRE(objective_kind("masked_lm") == ObjectiveKind::masked_lm);
  REQUIRE_THROWS_WITH(objective_kind("span"), StartsWith("unknown model.objective 'span' (expected causal_lm, "
                                                         "masked_lm or span_corruption)"));
}

TEST_CASE("a masked LM model attends both ways and refuses to generate", "[model][objective][masked_lm]") {
  Config c;
  c.model.vocab_size = 29;
  c.model.d_model = 8;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 6;
  c.model.d_ff = 12;
  c.model.objective = "masked_lm";
  c.data.tokenizer = "unused.model";
  validate_config(c);
  Model model(c.model, c.moe);
  model.allocate(Device::cpu(), DType::f64);
  model.initialize(3);
  REQUIRE(model.objective().attention_mask() == AttentionMask::bidirectional);
  model.set_objective(make_objective(ObjectiveKind::masked_lm, options(29)));
  REQUIRE_THROWS_WITH(model.set_objective(make_objective(ObjectiveKind::causal_lm)),
                      Contains("replaces one of another kind (masked_lm)"));
  // The first position's loss changes when only the last token changes: it sees later tokens.
  std::vector<int32_t> tokens = {5, 6, 7, 8, 9, 10}, targets = {5, -1, -1, -1, -1, -1};
  auto first_loss = [&](const std::vector<int32_t>& ids) {
    Batch b = make_batch(ids, targets, 1, Device::cpu());
    ModelSaved saved;
    return model.forward(b, saved).host_loss_sum();
  };
  const double before = first_loss(tokens);
  tokens.back() = 20;
  REQUIRE(first_loss(tokens) != before);
  REQUIRE_THROWS_WITH(model.logits(tokens, 1), Contains("generation needs a causal model, but model.objective = "
                                                        "'masked_lm' is an encoder only"));
}

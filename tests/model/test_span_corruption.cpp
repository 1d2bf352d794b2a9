// T5 span corruption: the lengths of compute_input_and_target_lengths, the sentinel layout on
// hand-worked masks, the noise mask's statistics over many windows, no dropped token in the
// input, seeded choices independent of how windows are split, and the errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>

#include "src/model/span_corruption.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;

namespace {

constexpr int32_t k_eos = 2;
const std::vector<int32_t> k_sentinels = {6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

ObjectiveOptions options(int64_t seq_len, int64_t decoder_seq_len) {
  ObjectiveOptions o;
  o.tokens.sentinels = k_sentinels;
  o.vocab_size = 100000;
  o.seed = 99;
  o.seq_len = seq_len;
  o.decoder_seq_len = decoder_seq_len;
  o.eos_id = k_eos;
  return o;
}

// rows windows of `length` distinct tokens (>= 100: never a sentinel or EOS), keys from `first`.
data::TokenWindows distinct_windows(int64_t rows, int64_t length, int64_t first = 0) {
  data::TokenWindows w;
  w.rows = rows;
  w.seq_len = length - 1;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < length; ++t) w.tokens.push_back(static_cast<int32_t>(100 + (first + r) * 1000 + t));
    w.starts.push_back(0);
    w.keys.push_back(data::global_sample_key(first + r));
  }
  return w;
}

bool is_sentinel(int32_t id) { return std::find(k_sentinels.begin(), k_sentinels.end(), id) != k_sentinels.end(); }

}  // namespace

TEST_CASE("span-corruption lengths are T5's compute_input_and_target_lengths", "[model][objective][span]") {
  // T5 with inputs_length 512: raw windows of 568 tokens, targets of 114 (85 noise, 28 spans, EOS).
  const SpanLengths t5 = span_lengths_for_inputs(512, 0.15, 3.0);
  CHECK(t5.tokens == 568);
  CHECK(t5.noise == 85);
  CHECK(t5.spans == 28);
  CHECK(t5.inputs == 512);
  CHECK(t5.targets == 114);
  // 128: 141 raw tokens, round(21.15) = 21 noise in 7 spans; 142 would give an input of 129.
  const SpanLengths s = span_lengths_for_inputs(128, 0.15, 3.0);
  CHECK(s.tokens == 141);
  CHECK(s.targets == 29);
  CHECK(span_lengths(142, 0.15, 3.0).inputs == 129);
  // Ties round to even as TensorFlow's round does (in float32: 10 * 0.15f = 1.5000001 rounds up).
  CHECK(span_lengths(10, 0.15, 3.0).noise == 2);
  CHECK(span_lengths(20, 0.1, 4.0).noise == 2);  // 2 noise tokens, round(0.5) = 0 spans, clamped to 1
  CHECK(span_lengths(20, 0.1, 4.0).spans == 1);
  CHECK(span_lengths(50, 0.15, 3.0).noise == 8);  // round(7.5) in float32 (7.50000019) = 8
  CHECK(span_lengths(50, 0.15, 3.0).spans == 3);  // round(8 / 3)
}

TEST_CASE("a fixed noise mask gives T5's sentinel layout", "[model][objective][span]") {
  // The paper's example: "Thank you <X> me to your party <Y> week." / "<X> for inviting <Y> last <Z>",
  // with T5's code's EOS where the paper shows the final sentinel.
  //                             Thank you for inviting me to your party last week .
  const std::vector<int32_t> tokens = {20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
  const std::vector<uint8_t> noise = {0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0};
  std::vector<int32_t> inputs, targets;
  corrupt_spans(tokens.data(), noise, k_sentinels, k_eos, inputs, targets);
  CHECK(inputs == std::vector<int32_t>{20, 21, 6, 24, 25, 26, 27, 7, 29, 30, k_eos});
  CHECK(targets == std::vector<int32_t>{6, 22, 23, 7, 28, k_eos});
  // A span at the very end, and spans of one token.
  corrupt_spans(tokens.data(), {0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1}, k_sentinels, k_eos, inputs, targets);
  CHECK(inputs == std::vector<int32_t>{20, 6, 22, 7, 24, 25, 26, 27, 28, 8, k_eos});
  CHECK(targets == std::vector<int32_t>{6, 21, 7, 23, 8, 29, 30, k_eos});
  REQUIRE_THROWS_WITH(corrupt_spans(tokens.data(), noise, {6}, k_eos, inputs, targets),
                      Contains("noise span 1 has no sentinel (1 known)"));
}

TEST_CASE("the noise mask: exact counts per window, T5's segmentation statistics over many",
          "[model][objective][span]") {
  const SpanLengths n = span_lengths_for_inputs(128, 0.15, 3.0);  // 141 tokens, 21 noise, 7 spans
  const int samples = 20000;
  data::SplitMix64 rng(5);
  std::vector<double> noise_at(static_cast<size_t>(n.tokens), 0.0);
  std::map<int64_t, int64_t> first_noise_length;
  double noise_spans = 0, noise_total = 0;
  for (int s = 0; s < samples; ++s) {
    const std::vector<uint8_t> mask = random_spans_noise_mask(n, rng);
    REQUIRE(static_cast<int64_t>(mask.size()) == n.tokens);
    REQUIRE(mask[0] == 0);  // interleaving starts with non-noise
    int64_t noise = 0, spans = 0, first = 0;
    for (size_t i = 0; i < mask.size(); ++i) {
      noise += mask[i];
      noise_at[i] += mask[i];
      if (mask[i] && !mask[i - 1]) ++spans;
      if (mask[i] && spans == 1) ++first;
    }
    REQUIRE(noise == 21);
    REQUIRE(spans == 7);
    ++first_noise_length[first];
    noise_total += static_cast<double>(noise);
    noise_spans += static_cast<double>(spans);
  }
  CHECK(noise_total / (samples * static_cast<double>(n.tokens)) == Approx(0.15).margin(0.002));  // 21 / 141
  CHECK(noise_total / noise_spans == Approx(3.0));  // mean noise span length
  // A span's length is uniform over the compositions of 21 into 7 parts: P(1) = C(19,5)/C(20,6) = 0.3,
  // P(2) = C(18,5)/C(20,6) = 0.2211, P(3) = C(17,5)/C(20,6) = 0.1597.
  CHECK(first_noise_length[1] / double(samples) == Approx(0.3).margin(0.012));
  CHECK(first_noise_length[2] / double(samples) == Approx(0.2211).margin(0.012));
  CHECK(first_noise_length[3] / double(samples) == Approx(0.1597).margin(0.012));
  // The mask ends with a noise span, so the last position is always noise and the interior a little
  // less than 15%: an independent Python transcription of T5's _random_segmentation and
  // interleaving gives 0.1353 per interior position (40 .. 100), flat across it.
  CHECK(noise_at[static_cast<size_t>(n.tokens - 1)] == samples);
  double middle = 0;
  for (int64_t i = 40; i < n.tokens - 40; ++i) {
    INFO("position " << i);
    CHECK(noise_at[static_cast<size_t>(i)] / samples == Approx(0.1353).margin(0.015));
    middle += noise_at[static_cast<size_t>(i)] / samples / static_cast<double>(n.tokens - 80);
  }
  CHECK(middle == Approx(0.1353).margin(0.004));
}

TEST_CASE("span-corruption batches: exact lengths, no dropped token in the input, targets shifted into the decoder",
          "[model][objective][span]") {
  const int64_t seq_len = 64, dec_len = 20, rows = 300;
  SpanCorruption objective(options(seq_len, dec_len));
  const SpanLengths n = objective.lengths(seq_len);
  REQUIRE(objective.window_seq_len(seq_len) == n.tokens - 1);
  REQUIRE(objective.loss_positions(seq_len) == n.targets);
  REQUIRE(n.targets <= dec_len);
  const data::TokenWindows w = distinct_windows(rows, n.tokens);
  std::vector<int32_t> inputs, targets;
  objective.build(w, inputs, targets);
  REQUIRE(inputs.size() == static_cast<size_t>(rows * seq_len));
  REQUIRE(targets.size() == static_cast<size_t>(rows * dec_len));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* in = inputs.data() + r * seq_len;
    const int32_t* tg = targets.data() + r * dec_len;
    std::vector<int32_t> seen, window(w.window(r), w.window(r) + n.tokens);
    std::vector<int32_t> input_sentinels, target_sentinels;
    REQUIRE(in[seq_len - 1] == k_eos);
    for (int64_t t = 0; t < seq_len - 1; ++t) (is_sentinel(in[t]) ? input_sentinels : seen).push_back(in[t]);
    const size_t kept = seen.size();
    REQUIRE(tg[0] == k_sentinels[0]);
    for (int64_t t = 0; t < n.targets - 1; ++t) (is_sentinel(tg[t]) ? target_sentinels : seen).push_back(tg[t]);
    REQUIRE(tg[n.targets - 1] == k_eos);
    for (int64_t t = n.targets; t < dec_len; ++t) REQUIRE(tg[t] == -1);  // padding outside the loss
    // Sentinels 0, 1, ... in order, the same in both; no target token in the input.
    const std::vector<int32_t> expected(k_sentinels.begin(), k_sentinels.begin() + n.spans);
    REQUIRE(input_sentinels == expected);
    REQUIRE(target_sentinels == expected);
    REQUIRE(static_cast<int64_t>(kept) == n.tokens - n.noise);
    // The input's tokens and the target's tokens together are the window, each once.
    std::sort(seen.begin(), seen.end());
    REQUIRE(seen == window);
    // The input keeps the window's order; so does the target.
    REQUIRE(std::is_sorted(seen.begin(), seen.end()));
  }
  // The decoder reads EOS (the start token), then the targets shifted right, EOS on padding.
  const std::vector<int32_t> decoder = objective.decoder_inputs(targets);
  for (int64_t r = 0; r < rows; ++r) {
    REQUIRE(decoder[static_cast<size_t>(r * dec_len)] == k_eos);
    for (int64_t t = 1; t < dec_len; ++t) {
      const int32_t previous = targets[static_cast<size_t>(r * dec_len + t - 1)];
      REQUIRE(decoder[static_cast<size_t>(r * dec_len + t)] == (previous >= 0 ? previous : k_eos));
    }
  }
}

TEST_CASE("span-corruption choices depend on each window's key only", "[model][objective][span]") {
  const int64_t seq_len = 32, dec_len = 12;
  SpanCorruption objective(options(seq_len, dec_len));
  const int64_t length = objective.window_seq_len(seq_len) + 1;
  std::vector<int32_t> all_in, all_tg, in, tg;
  objective.build(distinct_windows(6, length), all_in, all_tg);
  for (int64_t first = 0; first < 6; first += 2) {  // the same windows, two at a time
    objective.build(distinct_windows(2, length, first), in, tg);
    REQUIRE(std::equal(in.begin(), in.end(), all_in.begin() + first * seq_len));
    REQUIRE(std::equal(tg.begin(), tg.end(), all_tg.begin() + first * dec_len));
  }
  // Another seed draws other masks.
  ObjectiveOptions other = options(seq_len, dec_len);
  other.seed = 100;
  SpanCorruption(other).build(distinct_windows(6, length), in, tg);
  REQUIRE(in != all_in);
}

TEST_CASE("span corruption's errors name what is wrong", "[model][objective][span]") {
  std::vector<int32_t> in, tg;
  SpanCorruption objective(options(32, 12));
  const int64_t length = objective.window_seq_len(32) + 1;
  REQUIRE_THROWS_WITH(objective.build(distinct_windows(2, length - 1), in, tg),
                      Contains("span_corruption: windows of " + std::to_string(length - 1) + " tokens, but model.seq_len = 32 "
                               "reads raw windows of " + std::to_string(length)));
  ObjectiveOptions few = options(32, 12);
  few.tokens.sentinels = {6};
  REQUIRE_THROWS_WITH(SpanCorruption(few).build(distinct_windows(2, length), in, tg),
                      Contains("span_corruption: 1 sentinel ids for 2 spans"));
  REQUIRE_THROWS_WITH(SpanCorruption(options(32, 5)).build(distinct_windows(2, length), in, tg),
                      Contains("model.decoder_seq_len = 5 is shorter than the target of 8 tokens"));
  ObjectiveOptions bad = options(32, 12);
  bad.rates.noise_density = 1.0;
  REQUIRE_THROWS_WITH(SpanCorruption{bad}, Contains("objective.noise_density = 1 must be in (0, 1)"));
  REQUIRE(SpanCorruption(options(32, 12)).special_tokens() == std::vector<std::string>{"<extra_id_0>", "<extra_id_1>"});
}

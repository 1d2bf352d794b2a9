// Span-corruption batches: per window a seeded T5 noise mask, the corrupted encoder input and
// the sentinel-delimited target.
#include "src/model/span_corruption.h"

#include <algorithm>

namespace moe {

namespace {

// _random_segmentation: num_items split into num_segments non-empty runs, uniformly. A run starts
// at item 0 and at each of num_segments - 1 of the items 1 .. num_items - 1, chosen by a shuffle.
std::vector<int64_t> random_segmentation(int64_t num_items, int64_t num_segments, data::SplitMix64& rng) {
  std::vector<uint8_t> first(static_cast<size_t>(num_items - 1), 0);
  std::fill_n(first.begin(), num_segments - 1, 1);
  for (int64_t i = num_items - 2; i > 0; --i) {  // Fisher-Yates
    std::swap(first[static_cast<size_t>(i)], first[rng.below(static_cast<uint64_t>(i + 1))]);
  }
  std::vector<int64_t> lengths(static_cast<size_t>(num_segments), 0);
  int64_t segment = 0;
  ++lengths[0];
  for (uint8_t starts : first) {
    segment += starts;
    ++lengths[static_cast<size_t>(segment)];
  }
  return lengths;
}

}  // namespace

std::string sentinel_piece(int64_t i) { return k_sentinel_prefix + std::to_string(i) + ">"; }

std::vector<uint8_t> random_spans_noise_mask(const SpanLengths& n, data::SplitMix64& rng) {
  MOE_CHECK(n.spans >= 1 && n.noise >= n.spans && n.tokens - n.noise >= n.spans, "span corruption: ", n.tokens,
            " tokens with ", n.noise, " noise tokens cannot form ", n.spans, " noise and non-noise spans");
  const std::vector<int64_t> noise = random_segmentation(n.noise, n.spans, rng);
  const std::vector<int64_t> kept = random_segmentation(n.tokens - n.noise, n.spans, rng);
  std::vector<uint8_t> mask;
  mask.reserve(static_cast<size_t>(n.tokens));
  for (size_t s = 0; s < noise.size(); ++s) {
    mask.insert(mask.end(), static_cast<size_t>(kept[s]), 0);
    mask.insert(mask.end(), static_cast<size_t>(noise[s]), 1);
  }
  return mask;
}

void corrupt_spans(const int32_t* tokens, const std::vector<uint8_t>& noise, const std::vector<int32_t>& sentinels,
                   int32_t eos, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  inputs.clear();
  targets.clear();
  size_t span = 0;
  for (size_t i = 0; i < noise.size(); ++i) {
    if (noise[i] && (i == 0 || !noise[i - 1])) {  // a span begins: its sentinel in both
      MOE_CHECK(span < sentinels.size(), "span corruption: noise span ", span, " has no sentinel (", sentinels.size(),
                " known)");
      inputs.push_back(sentinels[span]);
      targets.push_back(sentinels[span]);
      ++span;
    }
    (noise[i] ? targets : inputs).push_back(tokens[i]);
  }
  inputs.push_back(eos);
  targets.push_back(eos);
}

SpanCorruption::SpanCorruption(const ObjectiveOptions& options) : options_(options) {
  const ObjectiveConfig& r = options.rates;
  MOE_CHECK(r.noise_density > 0 && r.noise_density < 1 && r.mean_span_length >= 1,
            "span_corruption: objective.noise_density = ", r.noise_density,
            " must be in (0, 1) and objective.mean_span_length = ", r.mean_span_length, " at least 1");
}

SpanLengths SpanCorruption::lengths(int64_t seq_len) const {
  const SpanLengths n =
      span_lengths_for_inputs(seq_len, options_.rates.noise_density, options_.rates.mean_span_length);
  MOE_CHECK(n.inputs == seq_len, "span_corruption: model.seq_len = ", seq_len,
            " is not the corrupted length of any raw window; use a longer model.seq_len");
  return n;
}

std::vector<std::string> SpanCorruption::special_tokens() const {
  std::vector<std::string> out;
  const int64_t spans = options_.seq_len > 0 ? lengths(options_.seq_len).spans : 0;
  for (int64_t i = 0; i < spans; ++i) out.push_back(sentinel_piece(i));
  return out;
}

int64_t SpanCorruption::window_seq_len(int64_t seq_len) const { return lengths(seq_len).tokens - 1; }

int64_t SpanCorruption::loss_positions(int64_t seq_len) const { return lengths(seq_len).targets; }

void SpanCorruption::build(const data::TokenWindows& w, std::vector<int32_t>& inputs,
                           std::vector<int32_t>& targets) const {
  const int64_t seq_len = options_.seq_len, dec_len = options_.decoder_seq_len;
  MOE_CHECK(seq_len > 0 && dec_len > 0, "span_corruption: the model's seq_len and decoder_seq_len are unknown "
            "(build the objective with objective_options)");
  const SpanLengths n = lengths(seq_len);
  MOE_CHECK(static_cast<int64_t>(options_.tokens.sentinels.size()) >= n.spans, "span_corruption: ",
            options_.tokens.sentinels.size(), " sentinel ids for ", n.spans, " spans (set data.tokenizer to a "
            "tokenizer made by `moe tokenize --special-tokens`)");
  MOE_CHECK(dec_len >= n.targets, "span_corruption: model.decoder_seq_len = ", dec_len, " is shorter than the target of ",
            n.targets, " tokens");
  MOE_CHECK(w.window_length() == n.tokens, "span_corruption: windows of ", w.window_length(), " tokens, but model.seq_len = ",
            seq_len, " reads raw windows of ", n.tokens, " (the sampler reads window_seq_len)");
  MOE_CHECK(static_cast<int64_t>(w.keys.size()) == w.rows, "span_corruption: ", w.keys.size(), " window keys for ",
            w.rows, " windows (the samplers set TokenWindows::keys)");
  inputs.assign(static_cast<size_t>(w.rows * seq_len), 0);
  targets.assign(static_cast<size_t>(w.rows * dec_len), -1);
  std::vector<int32_t> in, tg;
  for (int64_t r = 0; r < w.rows; ++r) {
    data::SplitMix64 rng(data::mix64(options_.seed ^ w.keys[static_cast<size_t>(r)]));
    corrupt_spans(w.window(r), random_spans_noise_mask(n, rng), options_.tokens.sentinels, options_.eos_id, in, tg);
    std::copy(in.begin(), in.end(), inputs.begin() + r * seq_len);
    std::copy(tg.begin(), tg.end(), targets.begin() + r * dec_len);
  }
}

std::vector<int32_t> SpanCorruption::decoder_inputs(const std::vector<int32_t>& targets) const {
  const int64_t dec_len = options_.decoder_seq_len;
  MOE_CHECK(dec_len > 0 && static_cast<int64_t>(targets.size()) % dec_len == 0, "span_corruption: ", targets.size(),
            " targets are not sequences of model.decoder_seq_len = ", dec_len);
  std::vector<int32_t> out(targets.size(), options_.eos_id);
  for (size_t i = 0; i < targets.size(); ++i) {
    if (static_cast<int64_t>(i) % dec_len != 0 && targets[i - 1] >= 0) out[i] = targets[i - 1];
  }
  return out;
}

}  // namespace moe

// T5's span corruption (Raffel et al. 2020): spans of a raw window are dropped from the encoder's
// input, each replaced by a sentinel, and the decoder predicts the sentinels and the dropped spans.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/config/span_lengths.h"
#include "src/data/sample_index.h"
#include "src/model/objective.h"

namespace moe {

// The tokenizer piece of sentinel i: "<extra_id_i>" (`moe tokenize --special-tokens`).
constexpr char k_sentinel_prefix[] = "<extra_id_";
std::string sentinel_piece(int64_t i);

// T5's random_spans_noise_mask for a raw window of lengths.tokens tokens (1 = noise): the noise
// tokens and the non-noise tokens are each split into lengths.spans non-empty runs, uniformly
// over the compositions (a shuffled choice of run starts, as _random_segmentation does), then
// interleaved starting with non-noise. Noise lengths are drawn first, then non-noise lengths.
std::vector<uint8_t> random_spans_noise_mask(const SpanLengths& lengths, data::SplitMix64& rng);

// A noise mask applied to tokens[noise.size()]: inputs get the non-noise tokens with each noise
// span replaced by its sentinel (span i: sentinels[i]) and eos at the end; targets get, per span,
// its sentinel followed by its tokens, and eos at the end (t5.data.preprocessors.span_corruption).
void corrupt_spans(const int32_t* tokens, const std::vector<uint8_t>& noise, const std::vector<int32_t>& sentinels,
                   int32_t eos, std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

// Per sequence: a raw window of span_lengths_for_inputs(seq_len).tokens tokens (the sampled
// windows are that long), its noise mask from SplitMix64(mix64(seed ^ keys[r])), the corrupted
// input [seq_len] (exactly) and the target padded with -1 to decoder_seq_len. The decoder reads
// eos (the start token), then the target shifted right (eos where it is padding).
class SpanCorruption final : public Objective {
 public:
  explicit SpanCorruption(const ObjectiveOptions& options);
  ObjectiveKind kind() const override { return ObjectiveKind::span_corruption; }
  // The encoder's self-attention (the decoder's is causal).
  AttentionMask attention_mask() const override { return AttentionMask::bidirectional; }
  std::vector<std::string> special_tokens() const override;
  void build(const data::TokenWindows& windows, std::vector<int32_t>& inputs,
             std::vector<int32_t>& targets) const override;
  int64_t window_seq_len(int64_t seq_len) const override;
  std::vector<int32_t> decoder_inputs(const std::vector<int32_t>& targets) const override;
  // The target's length: every target position counts (no padding inside it).
  int64_t loss_positions(int64_t seq_len) const override;
  // The T5 sizes for an encoder input of seq_len.
  SpanLengths lengths(int64_t seq_len) const;

 private:
  ObjectiveOptions options_;
};

}  // namespace moe

// BERT's masked language model (Devlin et al. 2019): a bidirectional encoder predicts a random
// selection of its input positions, most of them hidden behind [MASK]; optionally with
// next-sentence prediction on [CLS] A [SEP] B [SEP] pairs.
#pragma once

#include "src/data/sample_index.h"
#include "src/model/objective.h"

namespace moe {

// Next-sentence prediction keeps each sequence's label in the target of its [CLS] position
// (position 0), negative so that the MLM loss skips it: IsNext (B follows A) or NotNext.
constexpr int32_t k_nsp_not_next_target = -2, k_nsp_is_next_target = -3;
// The labels (1 = IsNext, 0 = NotNext) of the sequences of targets [B*S] built with NSP; an error
// names a sequence whose [CLS] target is not a label.
std::vector<int32_t> nsp_labels(const std::vector<int32_t>& targets, int64_t seq_len);

// Per sequence of S positions: round(mask_rate * S) (at least 1) distinct positions are
// selected uniformly; each selected token becomes [MASK] with probability mask_token_rate, a
// token uniform over [0, vocab_size) with random_token_rate, else stays; targets are the
// original tokens at the selected positions and -1 elsewhere. The window's (S+1)-th token is
// not used. Row r draws from SplitMix64(mix64(seed ^ keys[r])) only.
// With rates.nsp the sequence is [CLS] A [SEP] B [SEP]: A is the window's first a tokens (a
// uniform in [1, S-4]), and B the next S-3-a tokens with probability 1/2 (IsNext), else S-3-a
// tokens of the row's partner window (TokenWindows::partners), from just after its first
// end-of-document token (eos_id) when one leaves room, else from its start (NotNext). Only the
// S-3 tokens of A and B are selected for the MLM (round(mask_rate * (S-3)), at least 1).
class MaskedLm final : public Objective {
 public:
  explicit MaskedLm(const ObjectiveOptions& options);
  ObjectiveKind kind() const override { return ObjectiveKind::masked_lm; }
  AttentionMask attention_mask() const override { return AttentionMask::bidirectional; }
  bool reports_accuracy() const override { return true; }
  bool predicts_next_sentence() const override { return options_.rates.nsp; }
  std::vector<std::string> special_tokens() const override;
  void build(const data::TokenWindows& windows, std::vector<int32_t>& inputs,
             std::vector<int32_t>& targets) const override;
  int64_t loss_positions(int64_t seq_len) const override;

 private:
  // Lays out row r as [CLS] A [SEP] B [SEP] into in[S] (target[0] = its label) and lists the
  // positions of A and B in `content`.
  void lay_out_pair(const data::TokenWindows& w, int64_t r, data::SplitMix64& rng, int32_t* in, int32_t* target,
                    std::vector<int64_t>& content) const;

  ObjectiveOptions options_;
};

}  // namespace moe

// BERT's masked language model (Devlin et al. 2019): a bidirectional encoder predicts a random
// selection of its input positions, most of them hidden behind [MASK].
#pragma once

#include "src/model/objective.h"

namespace moe {

// Per sequence of S positions: round(mask_rate * S) (at least 1) distinct positions are
// selected uniformly; each selected token becomes [MASK] with probability mask_token_rate, a
// token uniform over [0, vocab_size) with random_token_rate, else stays; targets are the
// original tokens at the selected positions and -1 elsewhere. The window's (S+1)-th token is
// not used. Row r draws from SplitMix64(mix64(seed ^ keys[r])) only.
class MaskedLm final : public Objective {
 public:
  explicit MaskedLm(const ObjectiveOptions& options);
  ObjectiveKind kind() const override { return ObjectiveKind::masked_lm; }
  AttentionMask attention_mask() const override { return AttentionMask::bidirectional; }
  bool reports_accuracy() const override { return true; }
  std::vector<std::string> special_tokens() const override { return {"[MASK]"}; }
  void build(const data::TokenWindows& windows, std::vector<int32_t>& inputs,
             std::vector<int32_t>& targets) const override;
  int64_t loss_positions(int64_t seq_len) const override;

 private:
  ObjectiveOptions options_;
};

}  // namespace moe

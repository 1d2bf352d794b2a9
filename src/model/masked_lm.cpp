// Masked LM batches: per sequence a seeded choice of positions to predict and of what each
// selected input shows ([MASK], a random token or itself).
#include "src/model/masked_lm.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "src/data/sample_index.h"

namespace moe {

namespace {

// Uniform in [0, 1) from the top 53 bits.
double next_unit(data::SplitMix64& rng) { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; }

}  // namespace

MaskedLm::MaskedLm(const ObjectiveOptions& options) : options_(options) {
  const ObjectiveConfig& r = options.rates;
  MOE_CHECK(r.mask_rate > 0 && r.mask_rate < 1, "masked_lm: objective.mask_rate = ", r.mask_rate,
            " must be in (0, 1)");
  MOE_CHECK(r.mask_token_rate >= 0 && r.random_token_rate >= 0 && r.mask_token_rate + r.random_token_rate <= 1,
            "masked_lm: objective.mask_token_rate = ", r.mask_token_rate, " and objective.random_token_rate = ",
            r.random_token_rate, " must be >= 0 with a sum of at most 1");
}

int64_t MaskedLm::loss_positions(int64_t seq_len) const {
  const auto n = static_cast<int64_t>(std::llround(options_.rates.mask_rate * static_cast<double>(seq_len)));
  return std::clamp<int64_t>(n, 1, seq_len);
}

void MaskedLm::build(const data::TokenWindows& w, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const {
  const SpecialTokens& tokens = options_.tokens;
  MOE_CHECK(tokens.mask >= 0, "masked_lm: the [MASK] id is unknown (set data.tokenizer to a tokenizer made by "
            "`moe tokenize --special-tokens`)");
  MOE_CHECK(options_.vocab_size > tokens.mask, "masked_lm: [MASK] = ", tokens.mask,
            " is outside the model vocabulary (model.vocab_size = ", options_.vocab_size, ")");
  MOE_CHECK(static_cast<int64_t>(w.keys.size()) == w.rows, "masked_lm: ", w.keys.size(), " window keys for ", w.rows,
            " windows (the samplers set TokenWindows::keys)");
  const int64_t seq_len = w.seq_len, num_selected = loss_positions(seq_len);
  const double mask_below = options_.rates.mask_token_rate;
  const double random_below = mask_below + options_.rates.random_token_rate;
  inputs.resize(static_cast<size_t>(w.rows * seq_len));
  targets.assign(inputs.size(), -1);
  std::vector<int64_t> order(static_cast<size_t>(seq_len));
  for (int64_t r = 0; r < w.rows; ++r) {
    const int32_t* window = w.window(r);
    int32_t* in = inputs.data() + r * seq_len;
    int32_t* target = targets.data() + r * seq_len;
    std::copy(window, window + seq_len, in);
    data::SplitMix64 rng(data::mix64(options_.seed ^ w.keys[static_cast<size_t>(r)]));
    // The first num_selected steps of a Fisher-Yates shuffle: distinct positions, uniformly.
    std::iota(order.begin(), order.end(), int64_t{0});
    for (int64_t i = 0; i < num_selected; ++i) {
      const auto j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(seq_len - i)));
      std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
      const int64_t at = order[static_cast<size_t>(i)];
      target[at] = window[at];
      const double u = next_unit(rng);
      if (u < mask_below) {
        in[at] = tokens.mask;
      } else if (u < random_below) {
        in[at] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(options_.vocab_size)));
      }
    }
  }
}

}  // namespace moe

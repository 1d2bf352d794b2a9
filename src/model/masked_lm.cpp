// Masked LM batches: per sequence a seeded choice of positions to predict and of what each
// selected input shows ([MASK], a random token or itself); with next-sentence prediction, the
// sentence pair laid out first.
#include "src/model/masked_lm.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe {

namespace {

// Uniform in [0, 1) from the top 53 bits.
double next_unit(data::SplitMix64& rng) { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; }

// [CLS] A [SEP] B [SEP]: the tokens of A and B in a sequence of seq_len.
int64_t pair_content(int64_t seq_len) { return seq_len - 3; }

// Where B starts in a NotNext partner window of `length` tokens: just after its first
// end-of-document token when b tokens fit after it, else 0.
int64_t partner_start(const int32_t* partner, int64_t length, int64_t b, int32_t eos_id) {
  for (int64_t i = 0; i + 1 + b <= length; ++i) {
    if (partner[i] == eos_id) return i + 1;
  }
  return 0;
}

}  // namespace

std::vector<int32_t> nsp_labels(const std::vector<int32_t>& targets, int64_t seq_len) {
  MOE_CHECK(seq_len > 0 && static_cast<int64_t>(targets.size()) % seq_len == 0, "next-sentence prediction: ",
            targets.size(), " targets are not whole sequences of ", seq_len);
  std::vector<int32_t> labels;
  for (size_t at = 0; at < targets.size(); at += static_cast<size_t>(seq_len)) {
    const int32_t t = targets[at];
    MOE_CHECK(t == k_nsp_is_next_target || t == k_nsp_not_next_target, "next-sentence prediction: sequence ",
              at / static_cast<size_t>(seq_len), " has target ", t, " at its [CLS] position, not a label (",
              k_nsp_is_next_target, " IsNext, ", k_nsp_not_next_target, " NotNext)");
    labels.push_back(t == k_nsp_is_next_target ? 1 : 0);
  }
  return labels;
}

MaskedLm::MaskedLm(const ObjectiveOptions& options) : options_(options) {
  const ObjectiveConfig& r = options.rates;
  MOE_CHECK(r.mask_rate > 0 && r.mask_rate < 1, "masked_lm: objective.mask_rate = ", r.mask_rate,
            " must be in (0, 1)");
  MOE_CHECK(r.mask_token_rate >= 0 && r.random_token_rate >= 0 && r.mask_token_rate + r.random_token_rate <= 1,
            "masked_lm: objective.mask_token_rate = ", r.mask_token_rate, " and objective.random_token_rate = ",
            r.random_token_rate, " must be >= 0 with a sum of at most 1");
}

std::vector<std::string> MaskedLm::special_tokens() const {
  if (options_.rates.nsp) return {"[MASK]", "[CLS]", "[SEP]"};
  return {"[MASK]"};
}

int64_t MaskedLm::loss_positions(int64_t seq_len) const {
  const int64_t candidates = options_.rates.nsp ? pair_content(seq_len) : seq_len;
  const auto n = static_cast<int64_t>(std::llround(options_.rates.mask_rate * static_cast<double>(candidates)));
  return std::clamp<int64_t>(n, 1, std::max<int64_t>(candidates, 1));
}

void MaskedLm::lay_out_pair(const data::TokenWindows& w, int64_t r, data::SplitMix64& rng, int32_t* in,
                            int32_t* target, std::vector<int64_t>& content) const {
  const int64_t n = pair_content(w.seq_len);
  const int64_t a = 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - 1))), b = n - a;
  const bool is_next = (rng.next() >> 63) != 0;
  const int32_t* window = w.window(r);
  const int32_t* b_tokens = window + a;
  if (!is_next) {
    const int32_t* partner = w.partner(r);
    b_tokens = partner + partner_start(partner, w.window_length(), b, options_.eos_id);
  }
  in[0] = options_.tokens.cls;
  std::copy(window, window + a, in + 1);
  in[1 + a] = options_.tokens.sep;
  std::copy(b_tokens, b_tokens + b, in + 2 + a);
  in[2 + a + b] = options_.tokens.sep;
  target[0] = is_next ? k_nsp_is_next_target : k_nsp_not_next_target;
  content.clear();
  for (int64_t i = 1; i <= a; ++i) content.push_back(i);
  for (int64_t i = a + 2; i < a + 2 + b; ++i) content.push_back(i);
}

void MaskedLm::build(const data::TokenWindows& w, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const {
  const SpecialTokens& tokens = options_.tokens;
  MOE_CHECK(tokens.mask >= 0, "masked_lm: the [MASK] id is unknown (set data.tokenizer to a tokenizer made by "
            "`moe tokenize --special-tokens`)");
  MOE_CHECK(options_.vocab_size > tokens.mask, "masked_lm: [MASK] = ", tokens.mask,
            " is outside the model vocabulary (model.vocab_size = ", options_.vocab_size, ")");
  MOE_CHECK(static_cast<int64_t>(w.keys.size()) == w.rows, "masked_lm: ", w.keys.size(), " window keys for ", w.rows,
            " windows (the samplers set TokenWindows::keys)");
  const bool nsp = options_.rates.nsp;
  if (nsp) {
    MOE_CHECK(tokens.cls >= 0 && tokens.sep >= 0, "masked_lm: next-sentence prediction needs the [CLS] and [SEP] ids "
              "(a tokenizer made by `moe tokenize --special-tokens`)");
    MOE_CHECK(w.seq_len >= 5, "masked_lm: next-sentence prediction needs model.seq_len >= 5, got ", w.seq_len);
    MOE_CHECK(w.partners.size() == w.tokens.size(), "masked_lm: next-sentence prediction needs a partner window per "
              "window (data::add_partner_windows), got ", w.partners.size(), " tokens for ", w.tokens.size());
  }
  const int64_t seq_len = w.seq_len, num_selected = loss_positions(seq_len);
  const double mask_below = options_.rates.mask_token_rate;
  const double random_below = mask_below + options_.rates.random_token_rate;
  inputs.resize(static_cast<size_t>(w.rows * seq_len));
  targets.assign(inputs.size(), -1);
  std::vector<int64_t> order(static_cast<size_t>(seq_len));
  for (int64_t r = 0; r < w.rows; ++r) {
    int32_t* in = inputs.data() + r * seq_len;
    int32_t* target = targets.data() + r * seq_len;
    data::SplitMix64 rng(data::mix64(options_.seed ^ w.keys[static_cast<size_t>(r)]));
    if (nsp) {
      lay_out_pair(w, r, rng, in, target, order);
    } else {
      std::copy(w.window(r), w.window(r) + seq_len, in);
      order.resize(static_cast<size_t>(seq_len));
      std::iota(order.begin(), order.end(), int64_t{0});
    }
    const std::vector<int32_t> original(in, in + seq_len);
    // The first num_selected steps of a Fisher-Yates shuffle: distinct positions, uniformly.
    const auto candidates = static_cast<int64_t>(order.size());
    for (int64_t i = 0; i < num_selected; ++i) {
      const auto j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(candidates - i)));
      std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
      const int64_t at = order[static_cast<size_t>(i)];
      target[at] = original[static_cast<size_t>(at)];
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

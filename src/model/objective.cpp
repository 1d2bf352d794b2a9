// Objectives: the causal language model (inputs are a window's first seq_len tokens, targets
// the token after each, every position counts, causal attention), the kind names and options.
#include "src/model/objective.h"

#include <algorithm>
#include <utility>

#include "src/data/tokenizer.h"
#include "src/model/masked_lm.h"
#include "src/model/span_corruption.h"

namespace moe {

namespace {

constexpr ObjectiveKind k_kinds[] = {ObjectiveKind::causal_lm, ObjectiveKind::masked_lm,
                                     ObjectiveKind::span_corruption};

class CausalLm final : public Objective {
 public:
  ObjectiveKind kind() const override { return ObjectiveKind::causal_lm; }
  AttentionMask attention_mask() const override { return AttentionMask::causal; }

  // targets[r*S + t] = window[r][t + 1], the token after inputs[r*S + t] = window[r][t].
  void build(const data::TokenWindows& w, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const override {
    inputs.resize(static_cast<size_t>(w.rows * w.seq_len));
    targets.resize(inputs.size());
    for (int64_t r = 0; r < w.rows; ++r) {
      const int32_t* window = w.window(r);
      std::copy(window, window + w.seq_len, inputs.begin() + r * w.seq_len);
      std::copy(window + 1, window + 1 + w.seq_len, targets.begin() + r * w.seq_len);
    }
  }

  int64_t loss_positions(int64_t seq_len) const override { return seq_len; }
};

}  // namespace

const char* objective_name(ObjectiveKind kind) {
  switch (kind) {
    case ObjectiveKind::causal_lm: return "causal_lm";
    case ObjectiveKind::masked_lm: return "masked_lm";
    case ObjectiveKind::span_corruption: return "span_corruption";
  }
  return "?";
}

ObjectiveKind objective_kind(const std::string& name) {
  for (ObjectiveKind kind : k_kinds) {
    if (name == objective_name(kind)) return kind;
  }
  MOE_FAIL("unknown model.objective '", name, "' (expected causal_lm, masked_lm or span_corruption)");
}

std::unique_ptr<Objective> make_objective(ObjectiveKind kind, const ObjectiveOptions& options) {
  switch (kind) {
    case ObjectiveKind::causal_lm: return std::make_unique<CausalLm>();
    case ObjectiveKind::masked_lm: return std::make_unique<MaskedLm>(options);
    case ObjectiveKind::span_corruption: return std::make_unique<SpanCorruption>(options);
  }
  MOE_FAIL("unknown objective kind ", static_cast<int>(kind));
}

namespace {

// The options of config's objective without special token ids.
ObjectiveOptions base_options(const Config& config) {
  ObjectiveOptions o;
  o.rates = config.objective;
  o.vocab_size = config.model.vocab_size;
  o.seed = config.train.seed;
  o.seq_len = config.model.seq_len;
  o.decoder_seq_len = config.model.decoder_seq_len;
  o.eos_id = static_cast<int32_t>(config.model.eos_id);
  return o;
}

}  // namespace

std::vector<std::string> objective_special_tokens(const Config& config) {
  return make_objective(objective_kind(config.model.objective), base_options(config))->special_tokens();
}

ObjectiveOptions objective_options(const Config& config, const data::Tokenizer* tokenizer) {
  ObjectiveOptions o = base_options(config);
  const std::string& name = config.model.objective;
  for (const std::string& piece : objective_special_tokens(config)) {
    MOE_CHECK(tokenizer != nullptr, "model.objective = '", name, "' needs the id of ", piece,
              ": set data.tokenizer to a tokenizer made by `moe tokenize --special-tokens`");
    const int32_t id = tokenizer->piece_id(piece);
    MOE_CHECK(id >= 0, tokenizer->path(), " (data.tokenizer) has no ", piece, " piece, which model.objective = '",
              name, "' needs: make the tokenizer with `moe tokenize --special-tokens`");
    MOE_CHECK(id < config.model.vocab_size, tokenizer->path(), ": ", piece, " = ", id,
              " is outside the model vocabulary (model.vocab_size = ", config.model.vocab_size, ")");
    if (piece.rfind(k_sentinel_prefix, 0) == 0) {
      o.tokens.sentinels.push_back(id);  // special_tokens() lists them in order
      continue;
    }
    MOE_CHECK(piece == "[MASK]" || piece == "[CLS]" || piece == "[SEP]", "objective: unknown special token ", piece);
    (piece == "[MASK]" ? o.tokens.mask : piece == "[CLS]" ? o.tokens.cls : o.tokens.sep) = id;
  }
  return o;
}

Batch Objective::make_batch(const data::TokenWindows& windows, int64_t vocab_size, Device device) const {
  MOE_CHECK(static_cast<int64_t>(windows.tokens.size()) == windows.rows * windows.window_length(), "objective: ",
            windows.tokens.size(), " tokens are not ", windows.rows, " windows of ", windows.window_length());
  for (int32_t id : windows.tokens) {
    MOE_CHECK(id >= 0 && id < vocab_size, "token id ", id, " in the data is outside the model vocabulary "
              "(model.vocab_size = ", vocab_size, "): the tokenizer's vocabulary is larger than the model's");
  }
  std::vector<int32_t> inputs, targets;
  build(windows, inputs, targets);
  std::vector<int32_t> decoder = decoder_inputs(targets);
  if (!decoder.empty()) {
    return make_seq2seq_batch(std::move(inputs), std::move(decoder), std::move(targets), windows.rows, device);
  }
  return moe::make_batch(std::move(inputs), std::move(targets), windows.rows, device);
}

}  // namespace moe

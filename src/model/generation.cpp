// The generation loop: per-sequence state, a cached step (prefill or decode_step) for the
// sequences that fit the cache and a full-window step for the others, then sampling.
#include "src/model/generation.h"

#include <chrono>
#include <memory>
#include <optional>
#include <random>

#include "src/util/check.h"

namespace moe {

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::length: return "length";
    case StopReason::eos: return "eos";
    case StopReason::stop: return "stop";
  }
  return "?";
}

namespace {

class Generator {
 public:
  Generator(const Model& model, const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& o,
            const TokenSink& sink)
      : model_(model), o_(o), sink_(sink), seq_(model.config().seq_len), tokens_(prompts), out_(prompts.size()),
        done_(prompts.size(), false) {
    MOE_CHECK(!prompts.empty(), "generation needs at least one prompt");
    for (size_t b = 0; b < prompts.size(); ++b) {
      MOE_CHECK(!prompts[b].empty(), "prompt ", b, " encodes to no tokens");
      rngs_.emplace_back(o.seed + b);
    }
    if (o.use_cache) cache_ = model.make_kv_cache(static_cast<int64_t>(prompts.size()));
  }

  // One new token for every unfinished sequence; returns the tokens fed to the model.
  int64_t step(bool first) {
    std::vector<size_t> cached, windowed;
    for (size_t b = 0; b < tokens_.size(); ++b) {
      if (done_[b]) continue;
      (cache_ && (first || length(b) <= seq_) ? cached : windowed).push_back(b);
    }
    int64_t fed = 0;
    if (!cached.empty()) fed += first ? prefill() : decode(cached);
    if (!windowed.empty()) fed += full_window(windowed);
    return fed;
  }
  bool finished() const {
    for (bool d : done_) if (!d) return false;
    return true;
  }
  std::vector<Generated> take() { return std::move(out_); }

 private:
  int64_t length(size_t b) const { return static_cast<int64_t>(tokens_[b].size()); }
  // The last seq_len tokens of sequence b, right-padded to seq_len (causal attention hides the padding).
  int64_t append_window(size_t b, std::vector<int32_t>& flat) const {
    const int64_t begin = std::max<int64_t>(0, length(b) - seq_);
    flat.insert(flat.end(), tokens_[b].begin() + begin, tokens_[b].end());
    flat.resize(flat.size() + static_cast<size_t>(seq_ - (length(b) - begin)), 0);
    return length(b) - begin - 1;  // the row of its last token
  }
  int64_t prefill() {
    std::vector<int32_t> flat;
    std::vector<int64_t> rows;
    for (size_t b = 0; b < tokens_.size(); ++b) rows.push_back(static_cast<int64_t>(b) * seq_ + append_window(b, flat));
    Tensor logits = model_.prefill(flat, *cache_);
    for (size_t b = 0; b < tokens_.size(); ++b) accept(b, logits, rows[b]);
    return static_cast<int64_t>(flat.size());
  }
  int64_t decode(const std::vector<size_t>& which) {
    // Every cache row steps; rows of finished or windowed sequences feed token 0 at
    // position 0 (their cache is never read again).
    std::vector<int32_t> ids(tokens_.size(), 0), positions(tokens_.size(), 0);
    for (size_t b : which) {
      ids[b] = tokens_[b].back();
      positions[b] = static_cast<int32_t>(length(b) - 1);
    }
    Tensor logits = model_.decode_step(ids, positions, *cache_);
    for (size_t b : which) accept(b, logits, static_cast<int64_t>(b));
    return static_cast<int64_t>(which.size());
  }
  int64_t full_window(const std::vector<size_t>& which) {
    std::vector<int32_t> flat;
    std::vector<int64_t> rows;
    for (size_t i = 0; i < which.size(); ++i) {
      rows.push_back(static_cast<int64_t>(i) * seq_ + append_window(which[i], flat));
    }
    Tensor logits = model_.logits(flat, static_cast<int64_t>(which.size()));
    for (size_t i = 0; i < which.size(); ++i) accept(which[i], logits, rows[i]);
    return static_cast<int64_t>(flat.size());
  }
  // Samples sequence b's next token from row `row` of logits [*, V].
  void accept(size_t b, const Tensor& logits, int64_t row) {
    std::vector<float> values = logits.rows(row, row + 1).to_vector<float>();
    if (o_.vocab_limit > 0 && o_.vocab_limit < static_cast<int64_t>(values.size())) {
      values.resize(static_cast<size_t>(o_.vocab_limit));
    }
    const int32_t next = sample_token(values, o_.sampling, rngs_[b]);
    if (next == o_.eos_id) return finish(b, StopReason::eos);
    tokens_[b].push_back(next);
    out_[b].tokens.push_back(next);
    if (sink_ && !sink_(b, next)) return finish(b, StopReason::stop);
    if (static_cast<int64_t>(out_[b].tokens.size()) >= o_.max_new_tokens) finish(b, StopReason::length);
  }
  void finish(size_t b, StopReason reason) {
    done_[b] = true;
    out_[b].reason = reason;
  }

  const Model& model_;
  const GenerationOptions& o_;
  const TokenSink& sink_;
  const int64_t seq_;
  std::vector<std::vector<int32_t>> tokens_;
  std::vector<Generated> out_;
  std::vector<bool> done_;
  std::vector<std::mt19937_64> rngs_;
  std::optional<KvCache> cache_;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::vector<Generated> generate(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                const GenerationOptions& options, const TokenSink& sink, GenerationTiming* timing) {
  MOE_CHECK(options.max_new_tokens >= 1, "max_new_tokens must be >= 1, got ", options.max_new_tokens);
  Generator gen(model, prompts, options, sink);
  GenerationTiming t;
  auto start = std::chrono::steady_clock::now();
  t.prefill_tokens = gen.step(true);
  t.prefill_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  while (!gen.finished()) t.decode_tokens += gen.step(false);
  t.decode_seconds = seconds_since(start);
  if (timing) *timing = t;
  return gen.take();
}

}  // namespace moe

// Span filling: the decoder's positions grow one token per step for every unfinished input,
// sampled from the logits of the last filled position.
#include "src/model/span_filling.h"

#include <algorithm>

namespace moe {

std::vector<Generated> fill_spans(const Model& model, const std::vector<std::vector<int32_t>>& inputs,
                                  const GenerationOptions& options, const TokenSink& sink) {
  const ModelConfig& c = model.config();
  MOE_CHECK(model.is_encoder_decoder(), "span filling needs an encoder-decoder (model.encoder_layers > 0)");
  MOE_CHECK(!inputs.empty(), "span filling needs at least one input");
  MOE_CHECK(options.max_new_tokens >= 1, "max_new_tokens must be >= 1, got ", options.max_new_tokens);
  const auto rows = static_cast<int64_t>(inputs.size());
  std::vector<int32_t> encoder(static_cast<size_t>(rows * c.seq_len), static_cast<int32_t>(c.eos_id));
  for (size_t b = 0; b < inputs.size(); ++b) {
    MOE_CHECK(!inputs[b].empty() && static_cast<int64_t>(inputs[b].size()) <= c.seq_len, "input ", b, " has ",
              inputs[b].size(), " tokens; span filling takes 1 to model.seq_len = ", c.seq_len);
    std::copy(inputs[b].begin(), inputs[b].end(), encoder.begin() + static_cast<int64_t>(b) * c.seq_len);
  }
  std::vector<int32_t> decoder(static_cast<size_t>(rows * c.decoder_seq_len), static_cast<int32_t>(c.eos_id));
  std::vector<Generated> out(inputs.size());
  std::vector<bool> done(inputs.size(), false);
  std::vector<std::mt19937_64> rngs;
  for (size_t b = 0; b < inputs.size(); ++b) rngs.emplace_back(options.seed + b);
  const int64_t steps = std::min(options.max_new_tokens, c.decoder_seq_len);
  for (int64_t t = 0; t < steps; ++t) {
    const Tensor logits = model.seq2seq_logits(encoder, decoder, rows);
    for (size_t b = 0; b < inputs.size(); ++b) {
      if (done[b]) continue;
      const int64_t row = static_cast<int64_t>(b) * c.decoder_seq_len + t;
      std::vector<float> values = logits.rows(row, row + 1).to_vector<float>();
      if (options.vocab_limit > 0 && options.vocab_limit < static_cast<int64_t>(values.size())) {
        values.resize(static_cast<size_t>(options.vocab_limit));
      }
      const int32_t next = sample_token(values, options.sampling, rngs[b]);
      done[b] = true;
      if (next == options.eos_id) {
        out[b].reason = StopReason::eos;
        continue;
      }
      out[b].tokens.push_back(next);
      if (sink && !sink(b, next)) {
        out[b].reason = StopReason::stop;
        continue;
      }
      if (t + 1 < c.decoder_seq_len) decoder[static_cast<size_t>(row + 1)] = next;  // the next position reads it
      done[b] = t + 1 >= steps;
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
  }
  return out;
}

std::vector<std::vector<int32_t>> target_spans(const std::vector<int32_t>& target,
                                               const std::vector<int32_t>& sentinels) {
  std::vector<std::vector<int32_t>> spans(sentinels.size());
  std::vector<int32_t>* current = nullptr;
  for (int32_t id : target) {
    auto it = std::find(sentinels.begin(), sentinels.end(), id);
    if (it != sentinels.end()) {
      current = &spans[static_cast<size_t>(it - sentinels.begin())];
      continue;
    }
    if (current) current->push_back(id);
  }
  return spans;
}

}  // namespace moe

// Per-token losses of a long sequence in overlapping model.seq_len windows (log-softmax in
// double from Model::logits) and one layer's hidden states of the first window.
#include "src/tools/score_text.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace moe {

std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& what) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (std::isspace(c) || c == ',') {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && !std::isspace(static_cast<unsigned char>(text[end])) && text[end] != ',') ++end;
    const std::string item = text.substr(i, end - i);
    const bool digits = item.size() <= 10 && std::all_of(item.begin(), item.end(), [](char d) {
      return std::isdigit(static_cast<unsigned char>(d)) != 0;
    });
    MOE_CHECK(digits && std::stoll(item) <= INT32_MAX, what, ": '", item,
              "' is not a token id (a non-negative integer; ids are separated by whitespace or commas)");
    ids.push_back(static_cast<int32_t>(std::stoll(item)));
    i = end;
  }
  return ids;
}

namespace {

void check_tokens(const Model& model, const std::vector<int32_t>& tokens, size_t min_tokens) {
  MOE_CHECK(tokens.size() >= min_tokens, "the text has ", tokens.size(), " token(s), but scoring needs at least ",
            min_tokens);
  const int64_t vocab = model.config().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    MOE_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "token ", tokens[i], " at position ", i,
              " is outside the vocabulary [0, ", vocab, ") of model.vocab_size");
  }
}

// The window of seq_len inputs starting at `start` (padded with id 0).
std::vector<int32_t> window_at(const std::vector<int32_t>& tokens, size_t start, int64_t seq_len) {
  std::vector<int32_t> window(static_cast<size_t>(seq_len), 0);
  const size_t end = std::min(tokens.size(), start + static_cast<size_t>(seq_len));
  std::copy(tokens.begin() + static_cast<std::ptrdiff_t>(start), tokens.begin() + static_cast<std::ptrdiff_t>(end),
            window.begin());
  return window;
}

}  // namespace

std::vector<TokenLoss> score_tokens(const Model& model, const std::vector<int32_t>& tokens) {
  check_tokens(model, tokens, 2);
  const int64_t seq_len = model.config().seq_len, vocab = model.config().vocab_size;
  std::vector<TokenLoss> out;
  for (size_t start = 0; start + 1 < tokens.size(); start += static_cast<size_t>(seq_len)) {
    const std::vector<double> logits = model.logits(window_at(tokens, start, seq_len), 1).to_vector<double>();
    const size_t num_targets = std::min(static_cast<size_t>(seq_len), tokens.size() - 1 - start);
    for (size_t t = 0; t < num_targets; ++t) {
      const double* row = logits.data() + t * static_cast<size_t>(vocab);
      const double max = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
      const int32_t target = tokens[start + t + 1];
      out.push_back({static_cast<int64_t>(start + t + 1), target, max + std::log(sum) - row[target]});
    }
  }
  return out;
}

std::vector<std::vector<double>> first_window_layer_output(const Model& model, const std::vector<int32_t>& tokens,
                                                           int64_t layer) {
  check_tokens(model, tokens, 1);
  const int64_t seq_len = model.config().seq_len, d = model.config().d_model;
  const std::vector<double> hidden = model.layer_output(window_at(tokens, 0, seq_len), 1, layer).to_vector<double>();
  const auto num_rows = static_cast<int64_t>(std::min(tokens.size(), static_cast<size_t>(seq_len)));
  std::vector<std::vector<double>> rows;
  for (int64_t t = 0; t < num_rows; ++t) rows.emplace_back(hidden.begin() + t * d, hidden.begin() + (t + 1) * d);
  return rows;
}

}  // namespace moe

// `moe eval --text/--tokens`: the loss of every token of a text under a checkpoint (scored in
// windows of model.seq_len) and a layer's hidden states, for token-by-token comparisons.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/model/model.h"

namespace moe {

struct TokenLoss {
  int64_t pos = 0;    // the token's position in the whole sequence (1 .. n-1)
  int32_t token = 0;
  double loss = 0;    // -log p(token | the tokens before it in its window), in double from the logits
};

// Token ids from text "1 2, 3\n4": whitespace and/or comma separated non-negative integers;
// `what` names the source in errors.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& what);

// tokens [n >= 2] below the model's vocabulary -> n-1 losses, one per token but the first. Windows
// of seq_len + 1 tokens overlapping by one (inputs tokens[w*S, w*S+S), targets shifted by one);
// the last window is padded with id 0, which the causal model's real positions never see.
std::vector<TokenLoss> score_tokens(const Model& model, const std::vector<int32_t>& tokens);

// Layer `layer`'s output hidden states [T, d] of the first window (T = min(n, seq_len) tokens),
// as T rows of d_model values.
std::vector<std::vector<double>> first_window_layer_output(const Model& model, const std::vector<int32_t>& tokens,
                                                           int64_t layer);

}  // namespace moe

// Span filling with a span-corruption encoder-decoder: greedy or sampled decoding of the target
// (a sentinel, its span, the next sentinel, ..., EOS) of corrupted inputs.
#pragma once

#include <cstdint>
#include <vector>

#include "src/model/generation.h"

namespace moe {

// inputs: B corrupted inputs (sentinels where spans were dropped, ending with EOS as in training)
// of at most model.seq_len ids; a shorter one is padded with model.eos_id to seq_len (the encoder
// has no padding mask). -> per input the decoded target after the decoder's start token
// (model.eos_id), options.eos_id ending it (not kept), at most min(max_new_tokens,
// decoder_seq_len) tokens. No KV cache: every step reruns the encoder and the decoder's
// positions; causal self-attention keeps a position's logits independent of those after it.
std::vector<Generated> fill_spans(const Model& model, const std::vector<std::vector<int32_t>>& inputs,
                                  const GenerationOptions& options, const TokenSink& sink = nullptr);

// The spans of a decoded target: span i is the tokens after sentinels[i] up to the next sentinel
// of the list (or the end); spans the target does not reach are empty.
std::vector<std::vector<int32_t>> target_spans(const std::vector<int32_t>& target,
                                               const std::vector<int32_t>& sentinels);

}  // namespace moe

// The sizes of T5 span corruption (Raffel et al. 2020): how many tokens of a raw window become
// noise, in how many spans, and the lengths of the corrupted input and of the target.
#pragma once

#include <cstdint>

namespace moe {

struct SpanLengths {
  int64_t tokens = 0;   // the raw window
  int64_t noise = 0;    // dropped tokens
  int64_t spans = 0;    // noise spans (= non-noise spans)
  int64_t inputs = 0;   // tokens - noise + spans + 1: the non-noise tokens, a sentinel per span, EOS
  int64_t targets = 0;  // noise + spans + 1: per span its sentinel and tokens, then EOS
};

// T5's random_spans_noise_mask counts for a raw window of `tokens` (>= 2) tokens: noise =
// round(tokens * density) clamped to [1, tokens - 1], spans = max(1, round(noise / mean_span)),
// rounded as TensorFlow does it there (float32 products, half to even).
SpanLengths span_lengths(int64_t tokens, double density, double mean_span);

// T5's compute_input_and_target_lengths: the longest raw window whose corrupted input fits in
// inputs_length tokens (with the counts above; the input grows by 0 or 1 token per raw token,
// so it fills inputs_length exactly once the window has a non-noise token for every span).
SpanLengths span_lengths_for_inputs(int64_t inputs_length, double density, double mean_span);

}  // namespace moe

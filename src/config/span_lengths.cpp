// T5 span-corruption sizes, as random_spans_noise_mask and compute_input_and_target_lengths
// compute them (t5/data/preprocessors.py).
#include "src/config/span_lengths.h"

#include <algorithm>
#include <cmath>

#include "src/util/check.h"

namespace moe {

namespace {

// tf.math.round of a float32: to nearest, ties to even (nearbyint under the default mode).
int64_t round_f32(float x) { return static_cast<int64_t>(std::nearbyint(x)); }

}  // namespace

SpanLengths span_lengths(int64_t tokens, double density, double mean_span) {
  MOE_CHECK(tokens >= 2, "span corruption: a raw window of ", tokens, " tokens is too short (at least 2)");
  MOE_CHECK(density > 0 && density < 1 && mean_span >= 1, "span corruption: objective.noise_density = ", density,
            " must be in (0, 1) and objective.mean_span_length = ", mean_span, " at least 1");
  SpanLengths s;
  s.tokens = tokens;
  s.noise = std::clamp<int64_t>(round_f32(static_cast<float>(tokens) * static_cast<float>(density)), 1, tokens - 1);
  s.spans = std::max<int64_t>(1, round_f32(static_cast<float>(s.noise) / static_cast<float>(mean_span)));
  s.inputs = tokens - s.noise + s.spans + 1;
  s.targets = s.noise + s.spans + 1;
  return s;
}

SpanLengths span_lengths_for_inputs(int64_t inputs_length, double density, double mean_span) {
  MOE_CHECK(inputs_length >= 3, "span corruption: an input of ", inputs_length, " tokens is too short (at least 3)");
  int64_t tokens = std::max<int64_t>(2, inputs_length - 1);
  while (span_lengths(tokens + 1, density, mean_span).inputs <= inputs_length) ++tokens;
  return span_lengths(tokens, density, mean_span);
}

}  // namespace moe

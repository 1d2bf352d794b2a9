// Next-token choice from logits: greedy, temperature, nucleus (top-p) and top-k sampling.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace moe {

struct SamplingOptions {
  double temperature = 1.0;  // 0 = greedy
  double top_p = 1.0;        // keep the smallest set of tokens whose probability reaches top_p
  int64_t top_k = 0;         // then keep at most the top_k likeliest (0 = no limit)
};

// logits[V] -> a token id. Greedy ties go to the lower id. Otherwise softmax(logits / temperature),
// cut to the nucleus (top_p) and to top_k, renormalised, sampled with one uniform draw of rng.
int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& options, std::mt19937_64& rng);

// The tokens nucleus sampling may return (for tests): ids sorted by probability, cut at top_p.
std::vector<int32_t> nucleus(const std::vector<double>& probs, double top_p);

}  // namespace moe

// Greedy / temperature / top-p / top-k sampling on the host (V numbers per generated token).
#include "src/model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "src/util/check.h"

namespace moe {

std::vector<int32_t> nucleus(const std::vector<double>& probs, double top_p) {
  std::vector<int32_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
  double mass = 0;
  size_t keep = 0;
  while (keep < order.size() && (keep == 0 || mass < top_p)) mass += probs[order[keep++]];
  order.resize(keep);
  return order;
}

int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& options, std::mt19937_64& rng) {
  MOE_CHECK(!logits.empty(), "sampling from empty logits");
  MOE_CHECK(options.temperature >= 0 && options.top_p > 0 && options.top_p <= 1 && options.top_k >= 0,
            "temperature must be >= 0, top_p in (0, 1] and top_k >= 0");
  if (options.temperature == 0) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += probs[i] = std::exp((logits[i] - max) / options.temperature);
  for (auto& p : probs) p /= total;
  std::vector<int32_t> kept = nucleus(probs, options.top_p);
  if (options.top_k > 0 && static_cast<int64_t>(kept.size()) > options.top_k) kept.resize(options.top_k);
  double kept_mass = 0;
  for (int32_t id : kept) kept_mass += probs[id];
  double u = std::uniform_real_distribution<double>(0.0, kept_mass)(rng);
  for (int32_t id : kept) {
    u -= probs[id];
    if (u <= 0) return id;
  }
  return kept.back();
}

}  // namespace moe

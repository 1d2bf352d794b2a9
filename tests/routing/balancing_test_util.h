// Shared inputs of the balancing tests: a random routing with every BalanceInputs field filled.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "routing/balancing.h"
#include "tests/test_util.h"

namespace moe::test {

// T tokens, E experts, k slots: softmax scores of random logits, each token's top k (ties to the
// lower index) with its scores as weights, the kept counts; noisy-gating inputs random.
inline BalanceInputs random_routing(int64_t T, int64_t E, int64_t k, int64_t seq_len, uint64_t seed) {
  BalanceInputs in;
  in.tokens = T, in.experts = E, in.slots = k, in.seq_len = seq_len;
  in.logits = random_values(T * E, seed, -2, 2);
  in.clean = random_values(T * E, seed + 1, -2, 2);
  in.raw_noise = random_values(T * E, seed + 2, -1, 1);
  in.normal = random_values(T * E, seed + 3, -1.5, 1.5);
  in.counts.assign(static_cast<size_t>(E), 0);
  for (int64_t t = 0; t < T; ++t) {
    const double* z = &in.logits[static_cast<size_t>(t * E)];
    double m = *std::max_element(z, z + E), sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += std::exp(z[j] - m);
    std::vector<double> s(static_cast<size_t>(E));
    for (int64_t j = 0; j < E; ++j) s[static_cast<size_t>(j)] = std::exp(z[j] - m) / sum;
    in.scores.insert(in.scores.end(), s.begin(), s.end());
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
    for (int64_t q = 0; q < k; ++q) {
      in.ids.push_back(order[static_cast<size_t>(q)]);
      in.weights.push_back(s[static_cast<size_t>(order[static_cast<size_t>(q)])]);
      ++in.counts[static_cast<size_t>(order[static_cast<size_t>(q)])];
    }
  }
  return in;
}

}  // namespace moe::test

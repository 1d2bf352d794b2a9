// The ST-MoE router z-loss coef * mean over tokens of logsumexp(logits)^2: a mean over tokens,
// so equal TP slices average.
#include <algorithm>
#include <cmath>

#include "routing/balancing_terms.h"

namespace moe {

namespace {

// coef/T * sum_t lse_t^2; d/dlogits[t,j] = coef * 2 lse_t softmax_tj / T.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  const double coef = c.z_coef;
  const int64_t T = in.tokens, E = in.experts;
  const double t = static_cast<double>(T);
  double value = 0;
  for (int64_t r = 0; r < T; ++r) {
    const double* row = &in.logits[balancing_detail::idx(r, E, 0)];
    double m = *std::max_element(row, row + E);
    double sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += std::exp(row[j] - m);
    double lse = m + std::log(sum);
    value += coef * lse * lse / t;
    for (int64_t j = 0; j < E; ++j)
      out.dlogits[balancing_detail::idx(r, E, j)] += coef * 2.0 * lse * std::exp(row[j] - lse) / t;
  }
  return value;
}

uint32_t inputs(const BalancingConfig&) { return balance_input::logits; }

}  // namespace

BalancingTerm z_balancing_term() {
  return {.name = "z", .coef_name = "z_coef", .config_key = "moe.z_loss_coef", .coef = &BalancingConfig::z_coef,
          .config_coef = &MoeConfig::z_loss_coef, .inputs = inputs, .tp = TpRule::mean_of_slices,
          .compute = compute};
}

}  // namespace moe

// DeepSeekMoE's device-level balance loss over device_groups contiguous expert groups: a product
// of group sums, so not computable from a TP slice.
#include "routing/balancing_terms.h"
#include "src/util/check.h"

namespace moe {

namespace {

// alpha2 * sum_g f'_g P'_g with f'_g = mean of f_i = E/(kT) counts_i over g and
// P'_g = sum of P_i = mean_t scores over g.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  const double alpha = c.device_coef;
  const int64_t T = in.tokens, E = in.experts, groups = c.device_groups, G = E / groups;
  const double t = static_cast<double>(T);
  double value = 0;
  for (int64_t g = 0; g < groups; ++g) {
    double f_mean = 0, p_sum = 0;
    for (int64_t i = g * G; i < (g + 1) * G; ++i) {
      f_mean += static_cast<double>(E) / (static_cast<double>(in.slots) * t) * static_cast<double>(in.counts[i]);
      for (int64_t r = 0; r < T; ++r) p_sum += in.scores[balancing_detail::idx(r, E, i)] / t;
    }
    f_mean /= static_cast<double>(G);
    value += alpha * f_mean * p_sum;
    for (int64_t i = g * G; i < (g + 1) * G; ++i)
      for (int64_t r = 0; r < T; ++r) out.dscores[balancing_detail::idx(r, E, i)] += alpha * f_mean / t;
  }
  return value;
}

uint32_t inputs(const BalancingConfig&) { return balance_input::scores | balance_input::counts; }

void check(const BalanceInputs& in, const BalancingConfig& c) {
  MOE_CHECK(c.device_groups >= 1, "balancing: device_groups = ", c.device_groups, ", expected >= 1");
  MOE_CHECK(in.experts % c.device_groups == 0, "balancing: device_groups = ", c.device_groups,
            " does not divide experts = ", in.experts);
}

}  // namespace

BalancingTerm device_balancing_term() {
  return {.name = "device", .coef_name = "device_coef", .config_key = "moe.device_loss_coef",
          .coef = &BalancingConfig::device_coef, .config_coef = &MoeConfig::device_loss_coef, .inputs = inputs,
          .tp = TpRule::not_allowed, .check = check, .compute = compute};
}

}  // namespace moe

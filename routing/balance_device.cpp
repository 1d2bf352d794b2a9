// DeepSeekMoE's device-level balance loss over device_groups contiguous expert groups: a product
// of group sums, so not computable from a TP slice. Its score gradient is one row per expert.
#include "kernels/cpu/balance.h"
#include "routing/balancing_terms.h"
#include "src/nn/linear.h"
#include "src/ops/ops.h"
#include "src/util/check.h"

namespace moe {

namespace {

// alpha2 * sum_g f'_g P'_g with f'_g = mean of f_i = E/(kT) counts_i over g and
// P'_g = sum of P_i = mean_t scores over g; d/dscores[t,i] = alpha2 f'_g / T.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  const std::vector<double> sums = balancing_detail::score_sums(in);
  std::vector<double> row(sums.size());
  const double value = cpu::device_balance_from_counts(sums.data(), in.counts.data(), in.tokens, in.slots, in.experts,
                                                       c.device_groups, c.device_coef, row.data());
  balancing_detail::add_to_every_token(row, in, out.dscores);
  return value;
}

// The kept slots' counts: the router's own where nothing can be dropped, else counted from the ids.
void on_device(const DeviceBalanceInputs& in, const BalancingConfig& c, Tensor& value, DeviceBalanceGrads& grads) {
  const Tensor sums = balancing_detail::score_sums_of(in);
  Tensor row = empty_like(grads.score_row);
  if (in.kept_counts.defined()) {
    ops::device_balance_from_counts(sums, in.kept_counts, in.kept_ids.size(0), in.kept_ids.size(1), c.device_groups,
                                    c.device_coef, value, row);
  } else {
    ops::device_balance(sums, in.kept_ids, c.device_groups, c.device_coef, value, row);
  }
  ops::accumulate(grads.score_row, row);
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
          .tp = TpRule::not_allowed, .check = check, .compute = compute, .grad_per_expert = true,
          .on_device = on_device};
}

}  // namespace moe

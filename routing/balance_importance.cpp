// Shazeer et al.'s importance loss w * CV(Importance)^2, Importance_i = the sum of the combine
// weights routed to expert i. A CV over every token: not computable from a TP slice.
#include "kernels/cpu/balance.h"
#include "routing/balancing_terms.h"
#include "src/ops/ops.h"

namespace moe {

namespace {

double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  double value = 0;
  cpu::importance_balance(in.weights.data(), in.ids.data(), static_cast<int64_t>(in.ids.size()), in.experts,
                          c.importance_coef, &value, out.dweights.data());
  return value;
}

void on_device(const DeviceBalanceInputs& in, const BalancingConfig& c, Tensor& value, DeviceBalanceGrads& grads) {
  ops::importance_balance(in.weights, in.kept_ids, in.scores.size(1), c.importance_coef, value, grads.dweights);
}

uint32_t inputs(const BalancingConfig&) { return balance_input::weights | balance_input::ids; }

}  // namespace

BalancingTerm importance_balancing_term() {
  return {.name = "importance", .coef_name = "importance_coef", .config_key = "moe.importance_loss_coef",
          .coef = &BalancingConfig::importance_coef, .config_coef = &MoeConfig::importance_loss_coef,
          .inputs = inputs, .tp = TpRule::not_allowed, .compute = compute, .on_device = on_device};
}

}  // namespace moe

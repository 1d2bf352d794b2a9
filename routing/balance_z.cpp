// The ST-MoE router z-loss coef * mean over tokens of logsumexp(logits)^2: a mean over tokens,
// so equal TP slices average.
#include "kernels/cpu/balance.h"
#include "routing/balancing_terms.h"
#include "src/ops/ops.h"

namespace moe {

namespace {

// coef/T * sum_t lse_t^2; d/dlogits[t,j] = coef * 2 lse_t softmax_tj / T.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  double value = 0;
  cpu::z_balance(in.logits.data(), in.tokens, in.experts, c.z_coef, &value, out.dlogits.data());
  return value;
}

void on_device(const DeviceBalanceInputs& in, const BalancingConfig& c, Tensor& value, DeviceBalanceGrads& grads) {
  ops::z_balance(in.logits, c.z_coef, value, grads.dlogits);
}

uint32_t inputs(const BalancingConfig&) { return balance_input::logits; }

}  // namespace

BalancingTerm z_balancing_term() {
  return {.name = "z", .coef_name = "z_coef", .config_key = "moe.z_loss_coef", .coef = &BalancingConfig::z_coef,
          .config_coef = &MoeConfig::z_loss_coef, .inputs = inputs, .tp = TpRule::mean_of_slices,
          .compute = compute, .on_device = on_device};
}

}  // namespace moe

// Shazeer et al.'s load loss w * CV(Load)^2 with the smooth estimator of noisy top-k gating:
// reads the gating noise (training only). A CV over every token: not computable from a TP slice.
#include "kernels/cpu/balance.h"
#include "routing/balancing_terms.h"
#include "src/ops/ops.h"
#include "src/util/check.h"

namespace moe {

namespace {

// P(x,i) = Phi((clean_i - thr_i) / softplus(raw_i)) with thr_i the k-th largest of
// h = clean + normal * softplus(raw) over the other experts; L = w * CV(Load)^2.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  double value = 0;
  cpu::load_balance(in.clean.data(), in.raw_noise.data(), in.normal.data(), in.tokens, in.experts, in.slots,
                    c.load_coef, &value, out.dclean.data(), out.draw_noise.data());
  return value;
}

void on_device(const DeviceBalanceInputs& in, const BalancingConfig& c, Tensor& value, DeviceBalanceGrads& grads) {
  ops::load_balance(in.clean, in.raw_noise, in.normal, in.kept_ids.size(1), c.load_coef, value, grads.dclean,
                    grads.draw_noise);
}

uint32_t inputs(const BalancingConfig&) { return balance_input::noise; }

void check(const BalanceInputs& in, const BalancingConfig&) {
  MOE_CHECK(in.slots < in.experts, "balancing: load_coef needs slots < experts (the k-th largest of the other E-1 "
            "experts), got k = ", in.slots, ", E = ", in.experts);
}

}  // namespace

BalancingTerm load_balancing_term() {
  return {.name = "load", .coef_name = "load_coef", .config_key = "moe.load_loss_coef",
          .coef = &BalancingConfig::load_coef, .config_coef = &MoeConfig::load_loss_coef, .inputs = inputs,
          .tp = TpRule::not_allowed, .check = check, .compute = compute, .on_device = on_device};
}

}  // namespace moe

// DeepSeek-V3's sequence-level balance loss: alpha * sum_i f_i P_i within each sequence, averaged
// over sequences; a mean over whole sequences, so TP slices of whole sequences average.
#include "kernels/cpu/balance.h"
#include "routing/balancing_terms.h"
#include "src/ops/ops.h"

namespace moe {

namespace {

// Per sequence of S tokens f_i = E/(kS) * #selections of i, P_i = mean_t s'_ti with s' the
// scores normalised per token; alpha * mean over sequences.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  double value = 0;
  cpu::seq_balance(in.scores.data(), in.ids.data(), in.tokens, in.experts, in.slots, in.seq_len, c.seq_coef, &value,
                   out.dscores.data());
  return value;
}

void on_device(const DeviceBalanceInputs& in, const BalancingConfig& c, Tensor& value, DeviceBalanceGrads& grads) {
  ops::seq_balance(in.scores, in.kept_ids, in.seq_len, c.seq_coef, value, grads.dscores);
}

uint32_t inputs(const BalancingConfig&) {
  return balance_input::scores | balance_input::ids | balance_input::seq_len;
}

}  // namespace

BalancingTerm seq_balancing_term() {
  return {.name = "seq", .coef_name = "seq_coef", .config_key = "moe.seq_aux_loss_coef",
          .coef = &BalancingConfig::seq_coef, .config_coef = &MoeConfig::seq_aux_loss_coef, .inputs = inputs,
          .tp = TpRule::mean_of_slices, .compute = compute, .on_device = on_device};
}

}  // namespace moe

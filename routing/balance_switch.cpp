// The Switch / GShard load-balancing loss alpha * E * sum_i f_i P_i: registered as a
// sum-statistics term (per-expert score sums and counts), so it runs from E numbers per layer.
#include "kernels/cpu/balance.h"
#include "routing/balancing_terms.h"
#include "src/nn/linear.h"
#include "src/ops/ops.h"
#include "src/util/check.h"

namespace moe {

namespace {

// f_i = counts_i / (k T), P_i = mean_t scores[t,i]; d/dscores[t,i] = alpha * E * f_i / T.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  ExpertSums sums;
  sums.score_sums = balancing_detail::score_sums(in);
  sums.counts = in.counts;
  sums.routed_counts = in.routed_counts.empty() ? in.counts : in.routed_counts;  // empty: nothing dropped
  sums.tokens = in.tokens;
  sums.slots = in.slots;
  SwitchLoss loss = switch_loss(sums, c);
  balancing_detail::add_to_every_token(loss.grad_per_expert, in, out.dscores);
  return loss.value;
}

uint32_t inputs(const BalancingConfig& c) {
  namespace bi = balance_input;
  return bi::scores | bi::counts | (c.aux_count == AuxCount::routed ? bi::routed_counts : 0u);
}

// The counts of the slots the term reads (kept, or routed before capacity dropping): the router's
// own where it made them, else counted from the ids.
void on_device(const DeviceBalanceInputs& in, const BalancingConfig& c, Tensor& value, DeviceBalanceGrads& grads) {
  const bool routed = c.aux_count == AuxCount::routed;
  const Tensor& ids = routed ? in.routed_ids : in.kept_ids;
  const Tensor& counts = routed ? in.routed_counts : in.kept_counts;
  const Tensor sums = balancing_detail::score_sums_of(in);
  Tensor row = empty_like(grads.score_row);
  if (counts.defined()) {
    const int64_t tokens = in.tokens > 0 ? in.tokens : ids.size(0);
    ops::switch_balance_from_counts(sums, counts, tokens, ids.size(1), c.switch_coef, value, row);
  } else {
    ops::switch_balance(sums, ids, c.switch_coef, value, row);
  }
  ops::accumulate(grads.score_row, row);
}

}  // namespace

SwitchLoss switch_loss(const std::vector<double>& score_sums, const std::vector<int64_t>& counts, int64_t tokens,
                       int64_t slots, double alpha) {
  MOE_CHECK(score_sums.size() == counts.size(), "switch_loss: ", score_sums.size(), " score sums for ", counts.size(),
            " experts");
  SwitchLoss out;
  out.grad_per_expert.resize(counts.size());
  out.value = cpu::switch_balance_from_counts(score_sums.data(), counts.data(), tokens, slots,
                                              static_cast<int64_t>(counts.size()), alpha, out.grad_per_expert.data());
  return out;
}

SwitchLoss switch_loss(const ExpertSums& sums, const BalancingConfig& config) {
  const bool routed = config.aux_count == AuxCount::routed;
  MOE_CHECK(!routed || sums.routed_counts.size() == sums.score_sums.size(), "switch_loss: aux_count = routed needs ",
            sums.score_sums.size(), " counts before capacity dropping, got ", sums.routed_counts.size());
  return switch_loss(sums.score_sums, routed ? sums.routed_counts : sums.counts, sums.tokens, sums.slots,
                     config.switch_coef);
}

BalancingTerm switch_balancing_term() {
  return {.name = "switch", .coef_name = "switch_coef", .config_key = "moe.aux_loss_coef",
          .coef = &BalancingConfig::switch_coef, .config_coef = &MoeConfig::aux_loss_coef, .inputs = inputs,
          .tp = TpRule::sum_statistics, .compute = compute, .grad_per_expert = true,
          .on_device = on_device};
}

}  // namespace moe

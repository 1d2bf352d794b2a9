// The Switch / GShard load-balancing loss alpha * E * sum_i f_i P_i: registered as a
// sum-statistics term (per-expert score sums and counts), so it runs from E numbers per layer.
#include <algorithm>

#include "routing/balancing_terms.h"
#include "src/ops/ops.h"
#include "src/util/check.h"

namespace moe {

namespace {

// f_i = counts_i / (k T), P_i = mean_t scores[t,i]; d/dscores[t,i] = alpha * E * f_i / T.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  using balancing_detail::idx;
  const int64_t T = in.tokens, E = in.experts;
  ExpertSums sums;
  sums.score_sums.assign(static_cast<size_t>(E), 0.0);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t i = 0; i < E; ++i) sums.score_sums[static_cast<size_t>(i)] += in.scores[idx(r, E, i)];
  sums.counts = in.counts;
  sums.routed_counts = in.routed_counts.empty() ? in.counts : in.routed_counts;  // empty: nothing dropped
  sums.tokens = T;
  sums.slots = in.slots;
  SwitchLoss loss = switch_loss(sums, c);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t i = 0; i < E; ++i) out.dscores[idx(r, E, i)] += loss.grad_per_expert[static_cast<size_t>(i)];
  return loss.value;
}

uint32_t inputs(const BalancingConfig& c) {
  namespace bi = balance_input;
  return bi::scores | bi::counts | (c.aux_count == AuxCount::routed ? bi::routed_counts : 0u);
}

}  // namespace

SwitchLoss switch_loss(const std::vector<double>& score_sums, const std::vector<int64_t>& counts, int64_t tokens,
                       int64_t slots, double alpha) {
  MOE_CHECK(score_sums.size() == counts.size(), "switch_loss: ", score_sums.size(), " score sums for ", counts.size(),
            " experts");
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1)), e = static_cast<double>(counts.size());
  SwitchLoss out;
  out.grad_per_expert.resize(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    double f = static_cast<double>(counts[i]) / (static_cast<double>(slots) * t);
    out.value += alpha * e * f * (score_sums[i] / t);
    out.grad_per_expert[i] = alpha * e * f / t;
  }
  return out;
}

SwitchLoss switch_loss(const ExpertSums& sums, const BalancingConfig& config) {
  const bool routed = config.aux_count == AuxCount::routed;
  MOE_CHECK(!routed || sums.routed_counts.size() == sums.score_sums.size(), "switch_loss: aux_count = routed needs ",
            sums.score_sums.size(), " counts before capacity dropping, got ", sums.routed_counts.size());
  return switch_loss(sums.score_sums, routed ? sums.routed_counts : sums.counts, sums.tokens, sums.slots,
                     config.switch_coef);
}

// The counts come from the ids the term reads (kept, or routed before capacity dropping).
void switch_on_device(const DeviceSums& in, const BalancingConfig& c, Tensor& value, Tensor& grad_row) {
  const Tensor& ids = c.aux_count == AuxCount::routed ? in.routed_ids : in.kept_ids;
  ops::switch_balance(in.score_sums, ids, c.switch_coef, value, grad_row);
}

BalancingTerm switch_balancing_term() {
  return {.name = "switch", .coef_name = "switch_coef", .config_key = "moe.aux_loss_coef",
          .coef = &BalancingConfig::switch_coef, .config_coef = &MoeConfig::aux_loss_coef, .inputs = inputs,
          .tp = TpRule::sum_statistics, .compute = compute, .from_sums = switch_loss, .on_device = switch_on_device};
}

}  // namespace moe

// Shazeer et al.'s importance loss w * CV(Importance)^2, Importance_i = the sum of the combine
// weights routed to expert i. A CV over every token: not computable from a TP slice.
#include "routing/balancing_terms.h"

namespace moe {

namespace {

double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  const double w = c.importance_coef;
  std::vector<double> importance(static_cast<size_t>(in.experts), 0.0), grad;
  for (size_t s = 0; s < in.ids.size(); ++s)
    if (in.ids[s] >= 0) importance[static_cast<size_t>(in.ids[s])] += in.weights[s];
  double cv2 = balancing_detail::cv_squared(importance, grad);
  for (size_t s = 0; s < in.ids.size(); ++s)
    if (in.ids[s] >= 0) out.dweights[s] += w * grad[static_cast<size_t>(in.ids[s])];
  return w * cv2;
}

uint32_t inputs(const BalancingConfig&) { return balance_input::weights | balance_input::ids; }

}  // namespace

BalancingTerm importance_balancing_term() {
  return {.name = "importance", .coef_name = "importance_coef", .config_key = "moe.importance_loss_coef",
          .coef = &BalancingConfig::importance_coef, .config_coef = &MoeConfig::importance_loss_coef,
          .inputs = inputs, .tp = TpRule::not_allowed, .compute = compute};
}

}  // namespace moe

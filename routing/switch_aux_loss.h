// The Switch / GShard load-balancing loss  L = alpha * E * sum_i f_i * P_i  with f_i the
// fraction of routed slots that chose expert i (top-k: counted over all k choices, divided
// by k) and P_i the mean router probability of expert i over the tokens.
#pragma once

#include <vector>

#include "src/tensor/tensor.h"

namespace moe {

struct AuxLossResult {
  double value = 0;    // alpha * E * sum f_i P_i
  Tensor expert_grad;  // [E] accum: d L / d probs[t,i] = alpha * E * f_i / T for every token t
};

// probs[T,E], counts[E] (slots per expert, summing to T*k) -> the loss and its gradient.
// f_i is a constant of the routing (no gradient through the discrete choice), as in Switch.
AuxLossResult switch_aux_loss(const Tensor& probs, const std::vector<int64_t>& counts, int64_t top_k, double alpha);

}  // namespace moe

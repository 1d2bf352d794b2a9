// One training step of a parallel layout against the one-rank reference's same step.
#pragma once

#include <catch2/catch.hpp>

#include "src/train/trainer.h"

namespace moe::test {

// The same f32 sums in another order (all-reduce, reduce-scatter, all-to-all, all-gather,
// pipeline accumulation): losses and the gradient norm to float rounding; the routing of every
// MoE layer and its expert bias exactly.
inline void require_same_step(const StepResult& p, const StepResult& r) {
  REQUIRE(p.loss == Approx(r.loss).epsilon(1e-5));
  REQUIRE(p.aux_loss == Approx(r.aux_loss).epsilon(1e-4));
  REQUIRE(p.grad_norm == Approx(r.grad_norm).epsilon(1e-4));
  REQUIRE(p.routing.size() == r.routing.size());
  for (size_t i = 0; i < p.routing.size(); ++i) {
    REQUIRE(p.routing[i].layer == r.routing[i].layer);
    REQUIRE(p.routing[i].tokens_per_expert == r.routing[i].tokens_per_expert);
    REQUIRE(p.routing[i].slots == r.routing[i].slots);
    // The expert biases (aux-loss-free balancing) where both hold this layer's: the same +-rate steps.
    if (!p.routing[i].bias.empty() && !r.routing[i].bias.empty()) REQUIRE(p.routing[i].bias == r.routing[i].bias);
  }
}

}  // namespace moe::test

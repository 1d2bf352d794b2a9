// The effective shape of an MoE layer after fine-grained segmentation (DeepSeekMoE: each expert
// split in m = moe.granularity): computed from [moe] here only, and passed to whoever needs it.
#pragma once

#include <cstdint>

#include "src/config/config.h"

namespace moe {

struct MoeShape {
  int64_t num_experts = 0;  // routed experts of one MoE layer: moe.num_experts * moe.granularity (m*E)
  int64_t top_k = 0;        // experts a top-k router picks per token: moe.top_k * moe.granularity (m*k)
  int64_t d_expert = 0;     // hidden width of one routed expert: moe.d_expert / moe.granularity (f/m)
  int64_t num_shared = 0;   // always-active shared experts: moe.num_shared_experts
  int64_t d_shared = 0;     // hidden width of one shared expert: moe.d_shared, or d_expert when it is 0
  // The shared experts as one FFN (num_shared * d_shared wide).
  int64_t shared_width() const { return num_shared * d_shared; }

  bool operator==(const MoeShape&) const = default;
};

// The shape of every MoE layer of `moe`; all zeros for a dense model (moe.num_experts = 0).
// moe.granularity must be at least 1 and divide moe.d_expert (validate_config checks both).
MoeShape moe_shape(const MoeConfig& moe);

}  // namespace moe

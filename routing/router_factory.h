// Builds the router of one MoE layer from the [moe] config.
#pragma once

#include <memory>
#include <string>

#include "routing/router.h"
#include "src/config/config.h"

namespace moe {

struct RouterSpec {
  int64_t d_model = 0, vocab_size = 0;
  int64_t num_experts = 0, top_k = 0;  // after fine-grained segmentation
  int64_t layer = 0;                   // the model layer (hash tables per layer)
  double init_std = 0.02;
};

std::unique_ptr<Router> make_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                    const RouterSpec& spec);

}  // namespace moe

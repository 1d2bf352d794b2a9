// Router construction: maps moe.router and its options onto the router classes.
#include "routing/router_factory.h"

#include "routing/expert_choice_router.h"
#include "routing/hash_router.h"
#include "routing/topk_router.h"

namespace moe {

std::unique_ptr<Router> make_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                    const RouterSpec& spec) {
  if (moe.router == "expert_choice") {
    return std::make_unique<ExpertChoiceRouter>(store, prefix, spec.d_model, spec.num_experts, moe.capacity_factor,
                                                spec.init_std);
  }
  if (moe.router == "hash") {
    HashRouterOptions h;
    h.kind = hash_kind_from_name(moe.hash_kind);
    h.num_experts = spec.num_experts;
    h.vocab_size = spec.vocab_size;
    h.table_path = moe.hash_table;
    h.seed = moe.hash_seed;
    h.layer_index = spec.layer;
    h.per_layer = moe.hash_per_layer;
    h.allow_oracle = moe.hash_allow_oracle;
    return std::make_unique<HashRouter>(h);
  }
  TopKRouterOptions o;
  o.d_model = spec.d_model;
  o.num_experts = spec.num_experts;
  o.init_std = spec.init_std;
  o.topk.k = spec.top_k;
  o.topk.num_groups = moe.num_groups;
  o.topk.top_groups = moe.top_groups;
  o.expert_bias = moe.expert_bias_rate > 0;
  if (moe.router == "softmax_topk") {
    o.topk.renormalize = moe.renormalize;
  } else if (moe.router == "topk_softmax") {
    o.topk.softmax_after_topk = true;
  } else if (moe.router == "sigmoid") {
    o.topk.score = ops::ScoreFunction::sigmoid;
    o.topk.renormalize = true;
  } else if (moe.router == "noisy_topk") {
    o.noisy = true;
    o.topk.softmax_after_topk = true;
  } else {
    MOE_FAIL("unknown moe.router '", moe.router, "'");
  }
  return std::make_unique<TopKRouter>(store, prefix, o);
}

}  // namespace moe

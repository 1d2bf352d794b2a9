// The router factories, one line per kind. A new router is its header, source and test, one line
// here and one RouterKind entry (its capabilities) in src/config/router_kinds.cpp.
#include "routing/router_registry.h"

#include <string_view>

#include "routing/expert_choice_router.h"
#include "routing/hash_router.h"
#include "routing/multihash_router.h"
#include "routing/topk_router.h"
#include "src/config/router_kinds.h"

namespace moe {

const std::vector<RouterEntry>& router_entries() {
  static const std::vector<RouterEntry> entries = {
      {"softmax_topk", make_softmax_topk_router},
      {"topk_softmax", make_topk_softmax_router},
      {"sigmoid", make_sigmoid_router},
      {"noisy_topk", make_noisy_topk_router},
      {"expert_choice", make_expert_choice_router},
      {"hash", make_hash_router},
      {"multihash", make_multihash_router},
  };
  return entries;
}

std::unique_ptr<Router> make_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                    const RouterSpec& spec) {
  const RouterKind& kind = router_kind(moe.router);
  for (const RouterEntry& entry : router_entries()) {
    if (std::string_view(entry.kind) == kind.name) return entry.make(store, prefix, moe, spec);
  }
  MOE_FAIL("moe.router = '", kind.name, "' has no factory in routing/router_registry.cpp");
}

}  // namespace moe

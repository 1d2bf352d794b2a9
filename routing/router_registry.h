// The router registry: one factory per router kind of src/config/router_kinds.cpp (which declares
// each kind's capabilities), and make_router, which builds a layer's router by its kind.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "routing/router.h"
#include "src/config/config.h"

namespace moe {

struct RouterEntry {
  const char* kind;    // a RouterKind::name
  RouterFactory make;  // builds it
};

// Every factory, one per router kind, in the order of router_kinds().
const std::vector<RouterEntry>& router_entries();

// The router of one MoE layer: the factory of moe.router's kind (moe.layer_routers applied by the
// caller). Throws naming moe.router when the kind is unknown.
std::unique_ptr<Router> make_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                    const RouterSpec& spec);

}  // namespace moe

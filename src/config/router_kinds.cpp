// The router kinds, one entry each: adding a router is one entry here, one factory line in
// routing/router_registry.cpp, and the router's own header, source and test.
#include "src/config/router_kinds.h"

#include <algorithm>
#include <cmath>

#include "src/util/check.h"

namespace moe {

namespace {

double top_k_experts(const MoeConfig&, const MoeShape& shape) { return static_cast<double>(shape.top_k); }

}  // namespace

const std::vector<RouterKind>& router_kinds() {
  using R = Renormalization;
  static const std::vector<RouterKind> kinds = {
      {.name = "softmax_topk", .learned = true, .expert_bias = true, .capacity_dropping = true,
       .renormalization = R::optional, .k_key = "moe.top_k", .experts_per_token = top_k_experts},
      {.name = "topk_softmax", .learned = true, .expert_bias = true, .capacity_dropping = true,
       .renormalization = R::always, .k_key = "moe.top_k", .experts_per_token = top_k_experts},
      {.name = "sigmoid", .learned = true, .expert_bias = true, .capacity_dropping = true,
       .renormalization = R::always, .k_key = "moe.top_k", .experts_per_token = top_k_experts},
      {.name = "noisy_topk", .learned = true, .noisy = true, .expert_bias = true, .capacity_dropping = true,
       .renormalization = R::always, .k_key = "moe.top_k", .experts_per_token = top_k_experts},
      {.name = "expert_choice", .learned = true, .token_choice = false, .k_key = "moe.capacity_factor",
       .experts_per_token = [](const MoeConfig& m, const MoeShape&) { return m.capacity_factor; }},
      {.name = "hash", .hashed = true, .capacity_dropping = true,
       .experts_per_token = [](const MoeConfig&, const MoeShape&) { return 1.0; }},
      {.name = "multihash", .hashed = true, .capacity_dropping = true, .k_key = "moe.hash_count",
       .experts_per_token = [](const MoeConfig& m, const MoeShape&) { return static_cast<double>(m.hash_count); }},
  };
  return kinds;
}

const RouterKind* find_router_kind(std::string_view name) {
  for (const RouterKind& kind : router_kinds()) {
    if (name == kind.name) return &kind;
  }
  return nullptr;
}

const RouterKind& router_kind(std::string_view name) {
  const RouterKind* kind = find_router_kind(name);
  MOE_CHECK(kind != nullptr, "moe.router = '", name, "' is not one of: ", router_kind_names());
  return *kind;
}

std::string router_kind_names(const std::function<bool(const RouterKind&)>& has) {
  std::vector<const char*> names;
  for (const RouterKind& kind : router_kinds()) {
    if (!has || has(kind)) names.push_back(kind.name);
  }
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out += i == 0 ? "" : i + 1 == names.size() ? " or " : ", ";
    out += names[i];
  }
  return out;
}

int64_t routing_slots(const RouterKind& kind, const MoeConfig& moe, const MoeShape& shape) {
  if (!kind.token_choice) return shape.num_experts;
  return std::llround(kind.experts_per_token(moe, shape));
}

bool renormalizes(const RouterKind& kind, const MoeConfig& moe) {
  return kind.renormalization == Renormalization::always ||
         (kind.renormalization == Renormalization::optional && moe.renormalize);
}

const RouterKind& moe_layer_router(const MoeConfig& moe, int64_t moe_index) {
  if (moe.layer_routers.empty()) return router_kind(moe.router);
  MOE_CHECK(moe_index >= 0 && moe_index < static_cast<int64_t>(moe.layer_routers.size()), "MoE layer ", moe_index,
            " has no entry in moe.layer_routers (", moe.layer_routers.size(), " entries)");
  return router_kind(moe.layer_routers[static_cast<size_t>(moe_index)]);
}

std::vector<const RouterKind*> router_kinds_in_use(const MoeConfig& moe) {
  std::vector<const RouterKind*> out;
  const std::vector<std::string> names = moe.layer_routers.empty() ? std::vector<std::string>{moe.router}
                                                                    : moe.layer_routers;
  for (const std::string& name : names) {
    const RouterKind* kind = &router_kind(name);
    if (std::find(out.begin(), out.end(), kind) == out.end()) out.push_back(kind);
  }
  return out;
}

bool routes_on_targets(const MoeConfig& moe) {
  if (moe.num_experts <= 0 || moe.hash_kind != "oracle") return false;
  const auto kinds = router_kinds_in_use(moe);
  return std::any_of(kinds.begin(), kinds.end(), [](const RouterKind* k) { return k->hashed; });
}

}  // namespace moe

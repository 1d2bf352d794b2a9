// The registry of Experts implementations. Static libraries drop self-registering objects that
// nothing references, so the list is explicit: one line per implementation.
#include "experts/experts_registry.h"

#include "experts/grouped_experts.h"
#include "experts/loop_experts.h"

namespace moe {

namespace {

// "auto" picks grouped in builds with CUDA (its GPU kernels are the fast path) and the loop
// otherwise, where both run the same reference GEMM per expert and the loop needs no offsets.
#if MOE_WITH_CUDA
constexpr int k_grouped_auto_rank = 2;
#else
constexpr int k_grouped_auto_rank = 0;
#endif

template <typename Impl>
std::unique_ptr<Experts> make(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec) {
  return std::make_unique<Impl>(store, prefix, spec);
}

}  // namespace

const std::vector<ExpertsKind>& experts_kinds() {
  static const std::vector<ExpertsKind> kinds = {
      {"loop", "one GEMM chain per local expert over its row block (the reference)", 1, &make<LoopExperts>},
      {"grouped", "one grouped GEMM launch per projection over all local experts, offsets on the device",
       k_grouped_auto_rank, &make<GroupedExperts>},
  };
  return kinds;
}

const ExpertsKind& experts_kind(const std::string& impl) {
  const auto& kinds = experts_kinds();
  const ExpertsKind* best = nullptr;
  std::string names = "auto";
  for (const ExpertsKind& kind : kinds) {
    if (impl == kind.name) return kind;
    if (kind.auto_rank > 0 && (best == nullptr || kind.auto_rank > best->auto_rank)) best = &kind;
    names += std::string(", ") + kind.name;
  }
  MOE_CHECK(impl != "auto" || best != nullptr, "moe.experts_impl = 'auto': no implementation is ranked for auto");
  MOE_CHECK(impl == "auto", "moe.experts_impl = '", impl, "' is not one of: ", names);
  return *best;
}

std::unique_ptr<Experts> make_experts(const std::string& impl, ParamStore& store, const std::string& prefix,
                                      const ExpertsSpec& spec) {
  return experts_kind(impl).make(store, prefix, spec);
}

}  // namespace moe

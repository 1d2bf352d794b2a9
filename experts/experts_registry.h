// The Experts implementations by moe.experts_impl name, and "auto": the fastest one registered.
// Adding one is its own header and source plus one line in experts_registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "experts/experts.h"

namespace moe {

struct ExpertsKind {
  const char* name = "";     // the moe.experts_impl value
  const char* summary = "";  // one line for docs and error messages
  // "auto" picks the kind with the highest rank (the fastest); 0 = only by name.
  int auto_rank = 0;
  std::unique_ptr<Experts> (*make)(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec) = nullptr;
};

// Every registered kind, in registration order (the reference "loop" first).
const std::vector<ExpertsKind>& experts_kinds();
// The kind a moe.experts_impl value selects: "auto" -> the highest auto_rank, a registered name
// -> itself; anything else throws naming moe.experts_impl and the values it may take.
const ExpertsKind& experts_kind(const std::string& impl);
// Builds the kind `impl` selects; registers the canonical expert weights under prefix.
std::unique_ptr<Experts> make_experts(const std::string& impl, ParamStore& store, const std::string& prefix,
                                      const ExpertsSpec& spec);

}  // namespace moe

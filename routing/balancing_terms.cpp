// The balancing-term registry: one line per term (its definition is in routing/balance_<name>.cpp),
// the lookups on it, and the run config's balancing options.
#include "routing/balancing_terms.h"

#include "src/util/check.h"

namespace moe {

// Each term's definition, in its own source.
BalancingTerm switch_balancing_term();
BalancingTerm importance_balancing_term();
BalancingTerm load_balancing_term();
BalancingTerm z_balancing_term();
BalancingTerm seq_balancing_term();
BalancingTerm device_balancing_term();

const std::vector<BalancingTerm>& balancing_terms() {
  static const std::vector<BalancingTerm> terms = {
      switch_balancing_term(), importance_balancing_term(), load_balancing_term(),
      z_balancing_term(),      seq_balancing_term(),        device_balancing_term(),
  };
  return terms;
}

const BalancingTerm& balancing_term(const std::string& name) {
  std::string known;
  for (const BalancingTerm& term : balancing_terms()) {
    if (name == term.name) return term;
    known += (known.empty() ? "" : ", ") + std::string(term.name);
  }
  MOE_FAIL("balancing: no term called '", name, "' (known: ", known, ")");
}

std::vector<const BalancingTerm*> enabled_balancing_terms(const BalancingConfig& config) {
  std::vector<const BalancingTerm*> out;
  for (const BalancingTerm& term : balancing_terms())
    if (term.coefficient(config) > 0) out.push_back(&term);
  return out;
}

BalancingConfig only_terms(const BalancingConfig& config, const std::vector<const BalancingTerm*>& keep) {
  BalancingConfig out = config;
  for (const BalancingTerm& term : balancing_terms()) out.*term.coef = 0;
  for (const BalancingTerm* term : keep) out.*term->coef = config.*term->coef;
  return out;
}

void check_balancing_tp(const BalancingConfig& config, int tp, const std::string& who) {
  if (tp <= 1) return;
  std::vector<const char*> allowed;
  for (const BalancingTerm& term : balancing_terms())
    if (term.tp != TpRule::not_allowed) allowed.push_back(term.config_key);
  std::string keys;
  for (size_t i = 0; i < allowed.size(); ++i)
    keys += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + std::string(allowed[i]);
  for (const BalancingTerm* term : enabled_balancing_terms(config)) {
    MOE_CHECK(term->tp != TpRule::not_allowed, who, ": ", term->config_key, " = ", term->coefficient(config),
              " must be 0 under tensor parallelism (parallel.tp = ", tp, "): each rank routes a slice of the tokens, "
              "and the ", term->name, " loss is neither a sum nor a mean over tokens; use ", keys);
  }
}

AuxCount aux_count_from_name(const std::string& name) {
  if (name == "routed") return AuxCount::routed;
  if (name == "kept") return AuxCount::kept;
  MOE_FAIL("moe.aux_count = '", name, "' is not one of: routed, kept");
}

BalancingConfig balancing_config(const MoeConfig& moe) {
  BalancingConfig out;
  for (const BalancingTerm& term : balancing_terms()) out.*term.coef = moe.*term.config_coef;
  out.device_groups = moe.device_groups;
  out.aux_count = aux_count_from_name(moe.aux_count);
  return out;
}

}  // namespace moe

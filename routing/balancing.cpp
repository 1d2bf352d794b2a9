// The balancing driver: validates a micro-batch's inputs against the enabled terms of the
// registry and sums their values and gradients; the load metrics and the aux-loss-free bias update.
#include "routing/balancing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/balance.h"
#include "kernels/cpu/elementwise.h"
#include "routing/balancing_terms.h"
#include "src/ops/ops.h"
#include "src/util/check.h"

namespace moe {

namespace balancing_detail {

std::vector<double> score_sums(const BalanceInputs& in) {
  std::vector<double> sums(static_cast<size_t>(in.experts), 0.0);
  for (int64_t r = 0; r < in.tokens; ++r)
    for (int64_t i = 0; i < in.experts; ++i)
      sums[static_cast<size_t>(i)] += in.scores[static_cast<size_t>(r * in.experts + i)];
  return sums;
}

void add_to_every_token(const std::vector<double>& row, const BalanceInputs& in, std::vector<double>& dscores) {
  for (int64_t r = 0; r < in.tokens; ++r)
    for (int64_t i = 0; i < in.experts; ++i)
      dscores[static_cast<size_t>(r * in.experts + i)] += row[static_cast<size_t>(i)];
}

Tensor score_sums_on_device(const Tensor& scores) {
  Tensor sums = Tensor::empty({scores.size(1)}, scores.dtype(), scores.device());
  ops::column_sum(scores, sums);
  return sums;
}

Tensor score_sums_of(const DeviceBalanceInputs& in) {
  return in.score_sums.defined() ? in.score_sums : score_sums_on_device(in.scores);
}

}  // namespace balancing_detail

namespace {

void check_size(const char* field, size_t got, int64_t expected, const char* expected_what,
                const char* who = "balancing") {
  MOE_CHECK(static_cast<int64_t>(got) == expected, who, ": ", field, " has ", got, " values, expected ",
            expected_what, " = ", expected);
}

void check_coef(const char* name, double value) {
  MOE_CHECK(std::isfinite(value) && value >= 0, "balancing: ", name, " = ", value, ", expected a finite value >= 0");
}

void check_dims(const BalanceInputs& in) {
  MOE_CHECK(in.tokens >= 0, "balancing: tokens = ", in.tokens, ", expected >= 0");
  MOE_CHECK(in.experts >= 1, "balancing: experts = ", in.experts, ", expected >= 1");
  MOE_CHECK(in.slots >= 1, "balancing: slots = ", in.slots, ", expected >= 1");
}

void check_sizes(const BalanceInputs& in) {
  check_dims(in);
  const int64_t T = in.tokens, E = in.experts, k = in.slots;
  if (!in.scores.empty()) check_size("scores", in.scores.size(), T * E, "T*E");
  if (!in.logits.empty()) check_size("logits", in.logits.size(), T * E, "T*E");
  if (!in.weights.empty()) check_size("weights", in.weights.size(), T * k, "T*k");
  if (!in.ids.empty()) check_size("ids", in.ids.size(), T * k, "T*k");
  if (!in.counts.empty()) check_size("counts", in.counts.size(), E, "E");
  if (!in.routed_counts.empty()) check_size("routed_counts", in.routed_counts.size(), E, "E");
  if (!in.clean.empty()) check_size("clean", in.clean.size(), T * E, "T*E");
  if (!in.raw_noise.empty()) check_size("raw_noise", in.raw_noise.size(), T * E, "T*E");
  if (!in.normal.empty()) check_size("normal", in.normal.size(), T * E, "T*E");
  for (size_t s = 0; s < in.ids.size(); ++s)
    MOE_CHECK(in.ids[s] >= -1 && in.ids[s] < E, "balancing: ids[", s, "] = ", in.ids[s], " is outside [-1, E = ", E,
              ")");
  for (size_t i = 0; i < in.counts.size(); ++i)
    MOE_CHECK(in.counts[i] >= 0, "balancing: counts[", i, "] = ", in.counts[i], " is negative");
  for (size_t i = 0; i < in.routed_counts.size() && i < in.counts.size(); ++i)
    MOE_CHECK(in.routed_counts[i] >= in.counts[i], "balancing: routed_counts[", i, "] = ", in.routed_counts[i],
              " is less than counts[", i, "] = ", in.counts[i], " (an expert keeps at most the slots routed to it)");
}

// The inputs `term` reads are there (an empty micro-batch, T = 0, has empty fields that are
// nonetheless the right size). routed_counts may be empty: nothing was dropped.
void check_present(const BalancingTerm& term, const BalanceInputs& in, const BalancingConfig& c) {
  namespace bi = balance_input;
  const uint32_t reads = term.inputs(c);
  const int64_t T = in.tokens;
  auto has = [T](const auto& field) { return T == 0 || !field.empty(); };
  auto need = [&](uint32_t bit, bool present, const char* field, const char* why) {
    MOE_CHECK(!(reads & bit) || present, "balancing: ", term.coef_name, " = ", term.coefficient(c), " needs ", field,
              ", which is empty (", why, ")");
  };
  need(bi::scores, has(in.scores), "scores", "hash routers have no scores");
  need(bi::logits, has(in.logits), "logits", "hash routers have no logits");
  need(bi::weights, has(in.weights), "weights", "the combine weights after capacity dropping");
  need(bi::ids, has(in.ids), "ids", "they say where each slot went");
  need(bi::counts, has(in.counts), "counts", "f_i comes from the counts");
  if (reads & bi::noise) {
    std::string missing;
    for (auto [name, field] : {std::pair{"clean", &in.clean}, {"raw_noise", &in.raw_noise}, {"normal", &in.normal}})
      if (!has(*field)) missing += (missing.empty() ? "" : ", ") + std::string(name);
    MOE_CHECK(missing.empty(), "balancing: ", term.coef_name, " = ", term.coefficient(c),
              " needs the noisy-gating inputs clean, raw_noise and normal, but ", missing,
              " is empty: only a noisy top-k router provides them (in training)");
  }
}

// What needs no data: coefficients, T, E, k, seq_len where a term reads it, each term's own check.
void check_shape(const BalanceInputs& in, const BalancingConfig& c, const std::vector<const BalancingTerm*>& enabled) {
  for (const BalancingTerm& term : balancing_terms()) check_coef(term.coef_name, term.coefficient(c));
  check_dims(in);
  for (const BalancingTerm* term : enabled) {
    if (term->reads(c, balance_input::seq_len)) {
      MOE_CHECK(in.seq_len >= 1 && in.tokens % in.seq_len == 0, "balancing: seq_len = ", in.seq_len,
                ", expected >= 1 and dividing tokens = ", in.tokens);
    }
    if (term->check != nullptr) term->check(in, c);
  }
}

// Every provided field has its size; every enabled term has the fields it reads.
void validate(const BalanceInputs& in, const BalancingConfig& c, const std::vector<const BalancingTerm*>& enabled) {
  for (const BalancingTerm& term : balancing_terms()) check_coef(term.coef_name, term.coefficient(c));
  check_sizes(in);
  for (const BalancingTerm* term : enabled) check_present(*term, in, c);
  check_shape(in, c, enabled);
}

}  // namespace

BalanceResult compute_balancing(const BalanceInputs& in, const BalancingConfig& config) {
  namespace bi = balance_input;
  const std::vector<const BalancingTerm*> enabled = enabled_balancing_terms(config);
  validate(in, config, enabled);
  uint32_t reads = 0;
  for (const BalancingTerm* term : enabled) reads |= term->inputs(config);
  // One gradient vector for each differentiable input an enabled term reads.
  const auto TE = static_cast<size_t>(in.tokens * in.experts);
  BalanceResult out;
  if (reads & bi::scores) out.dscores.assign(TE, 0.0);
  if (reads & bi::logits) out.dlogits.assign(TE, 0.0);
  if (reads & bi::weights) out.dweights.assign(static_cast<size_t>(in.tokens * in.slots), 0.0);
  if (reads & bi::noise) {
    out.dclean.assign(TE, 0.0);
    out.draw_noise.assign(TE, 0.0);
  }
  // An empty micro-batch has nothing to balance: every enabled term is 0 (and T*E = 0 grads).
  for (const BalancingTerm* term : enabled)
    out.terms[term->name] = in.tokens == 0 ? 0 : term->compute(in, config, out);
  for (const auto& [name, value] : out.terms) out.total += value;
  return out;
}

void check_balancing_shape(const BalanceInputs& shape, const BalancingConfig& config) {
  check_shape(shape, config, enabled_balancing_terms(config));
}

LoadStats load_stats(const std::vector<int64_t>& counts, const std::vector<double>& scores, int64_t experts) {
  MOE_CHECK(experts >= 1, "load_stats: experts = ", experts, ", expected >= 1");
  check_size("counts", counts.size(), experts, "E", "load_stats");
  MOE_CHECK(scores.size() % static_cast<size_t>(experts) == 0, "load_stats: scores has ", scores.size(),
            " values, expected a multiple of E = ", experts);
  LoadStats stats;
  std::vector<double> c(counts.begin(), counts.end()), unused(counts.size());
  double mean = std::accumulate(c.begin(), c.end(), 0.0) / static_cast<double>(experts);
  if (mean > 0) {
    stats.cv = std::sqrt(cpu::cv_squared(c.data(), experts, unused.data()));
    stats.max_over_mean = *std::max_element(c.begin(), c.end()) / mean;
  }
  const size_t T = scores.size() / static_cast<size_t>(experts);
  for (size_t r = 0; r < T; ++r) {
    const double* row = &scores[r * static_cast<size_t>(experts)];
    double z = 0;
    for (int64_t i = 0; i < experts; ++i) {
      // NaN passes (a diverged step is reported by the trainer's loss check, with its step).
      MOE_CHECK(!(row[i] < 0), "load_stats: scores[", r, ",", i, "] = ", row[i], " is negative");
      z += row[i];
    }
    MOE_CHECK(!(z <= 0), "load_stats: scores of token ", r, " sum to 0, cannot normalise them");
  }
  if (T > 0) cpu::row_entropy_accumulate(scores.data(), static_cast<int64_t>(T), experts, 1.0 / static_cast<double>(T),
                                         &stats.entropy);
  return stats;
}

void update_expert_bias(std::vector<double>& bias, const std::vector<int64_t>& loads, double gamma) {
  MOE_CHECK(bias.size() == loads.size(), "update_expert_bias: bias has ", bias.size(), " values, loads has ",
            loads.size(), " (one per expert each)");
  cpu::update_expert_bias(bias.data(), loads.data(), static_cast<int64_t>(bias.size()), gamma, nullptr);
}

}  // namespace moe

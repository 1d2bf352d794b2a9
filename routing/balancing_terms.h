// The balancing-term registry: each loss (Switch, importance, load, z, sequence- and device-level)
// declares the inputs it reads, how it combines over TP slices and micro-batches, and computes its
// value and gradient. compute_balancing, the MoE layer and the trainer ask it instead of naming terms.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "routing/balancing.h"
#include "src/config/config.h"
#include "src/tensor/tensor.h"

namespace moe {

// What a term reads (bits of BalancingTerm::inputs): the MoE layer copies only these to the host.
namespace balance_input {
constexpr uint32_t scores = 1u << 0;         // [T,E] router scores (gradient: dscores)
constexpr uint32_t logits = 1u << 1;         // [T,E] the logits of the scores (gradient: dlogits)
constexpr uint32_t weights = 1u << 2;        // [T,k] combine weights after capacity dropping (gradient: dweights)
constexpr uint32_t ids = 1u << 3;            // [T,k] experts after capacity dropping
constexpr uint32_t counts = 1u << 4;         // [E] slots each expert kept
constexpr uint32_t routed_counts = 1u << 5;  // [E] slots routed before capacity dropping
constexpr uint32_t noise = 1u << 6;          // [T,E] noisy gating clean, raw_noise, normal (grads: dclean, draw_noise)
constexpr uint32_t seq_len = 1u << 7;        // tokens per sequence
}  // namespace balance_input

// What a term reads on the device: the router's tensors where they are (nothing crosses to the
// host). Row-major, on the scores' device.
struct DeviceBalanceInputs {
  Tensor scores;                    // accum[T,E]
  Tensor logits;                    // accum[T,E]: the logits of the scores (z-loss)
  Tensor weights;                   // accum[T,k]: combine weights after capacity dropping
  Tensor kept_ids;                  // i32[T,k]: experts after capacity dropping (-1 = dropped)
  Tensor routed_ids;                // i32[T,k]: experts the router chose, before capacity dropping
  Tensor clean, raw_noise, normal;  // accum[T,E]: noisy gating, undefined where no noise was drawn
  int64_t seq_len = 0;              // tokens per sequence
  // What the router counted in its own pass (Routing::score_sums, counts), or undefined:
  Tensor score_sums;     // accum[E]: the scores summed over the tokens
  Tensor routed_counts;  // i64[E]: the slots of routed_ids per expert
  Tensor kept_counts;    // i64[E]: the slots of kept_ids per expert (defined where nothing can be dropped)
  // The tokens score_sums and the counts cover: 0 = the rows of the ids; under tensor parallelism
  // the sums and counts of a sum-statistics term are pooled over the ranks' slices (all of them).
  int64_t tokens = 0;
};

// Where terms on the device add their gradients (accum, zero-filled by the caller, each defined
// when an enabled term differentiates that input).
struct DeviceBalanceGrads {
  Tensor dscores, dlogits, dweights, dclean, draw_noise;  // shaped like their inputs
  // accum[E]: d/dscores[t,i] of the terms with grad_per_expert, the same for every token t.
  Tensor score_row;
};

// How a term's value on a micro-batch is made from the tensor-parallel ranks' token slices.
enum class TpRule {
  sum_statistics,  // a function of ExpertSums: the slices' sums are added, then the term
  mean_of_slices,  // a mean over tokens or whole sequences: the slices' values and gradients are averaged
  not_allowed,     // neither (a CV over every token, products of group sums): rejected under TP
};

// One registered term. Over micro-batches every term is a value per micro-batch and the step's
// loss is their mean; the Switch term may instead pool its sums over the whole global batch
// (moe.balance_scope = "global_batch").
struct BalancingTerm {
  const char* name = "";        // its key in BalanceResult::terms, the layer statistics and the metrics
  const char* coef_name = "";   // its BalancingConfig field, named in errors
  const char* config_key = "";  // its coefficient's config key
  double BalancingConfig::*coef = nullptr;
  double MoeConfig::*config_coef = nullptr;
  uint32_t (*inputs)(const BalancingConfig&) = nullptr;  // balance_input bits it reads under this config
  TpRule tp = TpRule::not_allowed;
  // Preconditions beyond the presence and sizes of its inputs; nullptr = none.
  void (*check)(const BalanceInputs&, const BalancingConfig&) = nullptr;
  // Its value (coefficient applied) on a non-empty micro-batch; adds its gradients into the
  // gradient vectors of `out` that match its differentiable inputs (already sized).
  double (*compute)(const BalanceInputs&, const BalancingConfig&, BalanceResult& out) = nullptr;
  // Its gradient on the scores is one row of E numbers, the same for every token (a function of
  // per-expert sums: Switch, device-level): on the device it goes to DeviceBalanceGrads::score_row.
  bool grad_per_expert = false;
  // The term wholly on the device: value f64[1] written, its gradients added into `grads`, no
  // host wait. Preconditions are checked first by check_device_balancing.
  void (*on_device)(const DeviceBalanceInputs&, const BalancingConfig&, Tensor& value,
                    DeviceBalanceGrads& grads) = nullptr;

  double coefficient(const BalancingConfig& c) const { return c.*coef; }
  bool reads(const BalancingConfig& c, uint32_t input) const { return (inputs(c) & input) != 0; }
};

// Every term, in registry order.
const std::vector<BalancingTerm>& balancing_terms();
// The term called `name`; an unknown name is an error listing the known ones.
const BalancingTerm& balancing_term(const std::string& name);
// The terms with a coefficient > 0 under `config`.
std::vector<const BalancingTerm*> enabled_balancing_terms(const BalancingConfig& config);
// `config` with only `keep`'s coefficients left on.
BalancingConfig only_terms(const BalancingConfig& config, const std::vector<const BalancingTerm*>& keep);
// Under tensor parallelism (tp > 1) every enabled term must combine over token slices: an error
// (prefixed by `who`) names the first that cannot and the config keys that can.
void check_balancing_tp(const BalancingConfig& config, int tp, const std::string& who);

// The run config's balancing options ([moe] coefficients, device_groups, aux_count).
BalancingConfig balancing_config(const MoeConfig& moe);
// "routed" | "kept"; anything else is an error naming moe.aux_count.
AuxCount aux_count_from_name(const std::string& name);

// Helpers the terms' sources share (routing/balance_*.cpp).
namespace balancing_detail {
// [E] sums over the tokens of the host scores [T,E].
std::vector<double> score_sums(const BalanceInputs& in);
// dscores[t,i] += row[i] for every token t (the gradient of a per-expert term).
void add_to_every_token(const std::vector<double>& row, const BalanceInputs& in, std::vector<double>& dscores);
// The scores summed over the tokens, accum[E] on their device.
Tensor score_sums_on_device(const Tensor& scores);
// The score sums the router made, else a column sum of the scores.
Tensor score_sums_of(const DeviceBalanceInputs& in);
}  // namespace balancing_detail

}  // namespace moe

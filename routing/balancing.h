// Balancing losses and routing statistics on the host in f64, the reference of the terms on the
// device (formulas: kernels/cpu/balance.h): each term's value and gradient, the bias update, the load metrics.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe {

// Which slots the Switch loss's f_i counts (moe.aux_count).
enum class AuxCount {
  routed,  // every slot the router chose, before capacity dropping (Switch eq. 5, mesh-tensorflow)
  kept,    // only the slots an expert kept after capacity dropping
};

struct BalancingConfig {
  double switch_coef = 0;      // Switch/GShard: alpha * E * sum_i f_i P_i
  double importance_coef = 0;  // Shazeer: w * CV(Importance)^2
  double load_coef = 0;        // Shazeer: w * CV(Load)^2 with the smooth (noisy-gating) estimator
  double z_coef = 0;           // ST-MoE: (1/T) sum_t logsumexp(logits_t)^2
  double seq_coef = 0;         // DeepSeek-V3 sequence-level: alpha * sum_i f_i P_i per sequence, averaged
  double device_coef = 0;      // DeepSeekMoE device-level over device_groups contiguous expert groups
  int64_t device_groups = 0;
  AuxCount aux_count = AuxCount::routed;
};

// Host copies of one MoE layer's routing for one micro-batch. Row-major.
struct BalanceInputs {
  int64_t tokens = 0, experts = 0, slots = 0;  // T, E, k (slots per token)
  int64_t seq_len = 0;                         // tokens of one sequence (T is a multiple)
  std::vector<double> scores;   // [T*E] softmax (or sigmoid) scores; empty for hash routers
  std::vector<double> logits;   // [T*E] logits of the scores (z-loss); may be empty
  std::vector<double> weights;  // [T*k] combine weights
  std::vector<int32_t> ids;     // [T*k] chosen experts, -1 = none
  std::vector<int64_t> counts;  // [E] slots each expert kept (dropped ones excluded)
  // [E] slots routed to each expert before capacity dropping; empty = nothing was dropped (counts).
  std::vector<int64_t> routed_counts;
  // Noisy top-k gating, for the load estimator: h = clean + normal * softplus(raw_noise).
  std::vector<double> clean, raw_noise, normal;  // [T*E] each, or empty
};

struct BalanceResult {
  std::map<std::string, double> terms;  // "switch", "importance", "load", "z", "seq", "device" (enabled ones)
  double total = 0;                     // the sum of the terms (coefficients applied)
  // Gradients of `total`, zero-sized when no enabled term depends on that input.
  std::vector<double> dscores, dlogits, dweights, dclean, draw_noise;
};

// Every term with a coefficient > 0, from the registry (routing/balancing_terms.h). f_i uses the
// counts (a constant of the discrete routing, no gradient), P_i the scores.
// Definitions and normalisations: ../shared/reference.md "Router losses".
BalanceResult compute_balancing(const BalanceInputs& in, const BalancingConfig& config);
// The checks of compute_balancing that read no data (the terms on the device run them first):
// every coefficient finite and >= 0, T >= 0, E >= 1, k >= 1, seq_len where a term reads it, and
// each enabled term's own preconditions. `shape` gives tokens, experts, slots and seq_len.
void check_balancing_shape(const BalanceInputs& shape, const BalancingConfig& config);

// Per-expert sums of a micro-batch: what a sum-statistics term (Switch) reads; everything but
// `slots` adds up over token slices, micro-batches and ranks (which the MoE layer and the trainer
// do on the device).
struct ExpertSums {
  std::vector<double> score_sums;      // [E] sum over tokens of scores[:,i]
  std::vector<int64_t> counts;         // [E] slots each expert kept
  std::vector<int64_t> routed_counts;  // [E] slots routed before capacity dropping; empty if no term reads them
  int64_t tokens = 0;                  // T
  int64_t slots = 0;                   // slots per token (k), the same everywhere

};

// The Switch term from per-expert sums: its value and d/dscores[t,i], the same for every token t.
// compute_balancing uses it; the MoE layer calls it with sums computed on the device (no T*E
// copy), and the trainer with the sums pooled over the global batch.
struct SwitchLoss {
  double value = 0;
  std::vector<double> grad_per_expert;
};
SwitchLoss switch_loss(const std::vector<double>& score_sums, const std::vector<int64_t>& counts, int64_t tokens,
                       int64_t slots, double alpha);
// config.switch_coef with the counts config.aux_count names (routed needs sums.routed_counts).
SwitchLoss switch_loss(const ExpertSums& sums, const BalancingConfig& config);

// Load statistics of one layer for the metrics.
struct LoadStats {
  double cv = 0;            // coefficient of variation of the counts
  double max_over_mean = 0;
  double entropy = 0;       // mean over tokens of -sum_i p_i log p_i of the scores (0 if none)
};
LoadStats load_stats(const std::vector<int64_t>& counts, const std::vector<double>& scores, int64_t experts);

// Aux-loss-free balancing (DeepSeek-V3): b_i <- b_i - gamma * sign(load_i - mean load).
void update_expert_bias(std::vector<double>& bias, const std::vector<int64_t>& loads, double gamma);

}  // namespace moe

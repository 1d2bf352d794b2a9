// DeepSeek-V3's sequence-level balance loss: alpha * sum_i f_i P_i within each sequence, averaged
// over sequences; a mean over whole sequences, so TP slices of whole sequences average.
#include <numeric>

#include "routing/balancing_terms.h"
#include "src/util/check.h"

namespace moe {

namespace {

using balancing_detail::idx;

// Per sequence of S tokens f_i = E/(kS) * #selections of i, P_i = mean_t s'_ti with s' the
// scores normalised per token; alpha * mean over sequences.
double compute(const BalanceInputs& in, const BalancingConfig& c, BalanceResult& out) {
  const int64_t T = in.tokens, E = in.experts, k = in.slots, S = in.seq_len;
  const int64_t num_seqs = T / S;
  const double scale = c.seq_coef / static_cast<double>(num_seqs);
  double value = 0;
  std::vector<double> f(static_cast<size_t>(E));
  for (int64_t q = 0; q < num_seqs; ++q) {
    std::fill(f.begin(), f.end(), 0.0);
    for (int64_t r = q * S; r < (q + 1) * S; ++r)
      for (int64_t s = 0; s < k; ++s) {
        int32_t id = in.ids[idx(r, k, s)];
        if (id >= 0) f[static_cast<size_t>(id)] += static_cast<double>(E) / static_cast<double>(k * S);
      }
    for (int64_t r = q * S; r < (q + 1) * S; ++r) {
      const double* row = &in.scores[idx(r, E, 0)];
      double z = std::accumulate(row, row + E, 0.0);
      MOE_CHECK(!(z <= 0), "balancing: scores of token ", r, " sum to ", z, ", cannot normalise them (seq loss)");
      // dL/ds'_ti = a_i = scale f_i / S; through s' = s / z: dL/ds_tm = (a_m - sum_i a_i s'_ti) / z.
      double dot = 0;
      for (int64_t i = 0; i < E; ++i) {
        double a = scale * f[static_cast<size_t>(i)] / static_cast<double>(S);
        value += a * row[i] / z;
        dot += a * row[i] / z;
      }
      for (int64_t m = 0; m < E; ++m)
        out.dscores[idx(r, E, m)] += (scale * f[static_cast<size_t>(m)] / static_cast<double>(S) - dot) / z;
    }
  }
  return value;
}

uint32_t inputs(const BalancingConfig&) {
  return balance_input::scores | balance_input::ids | balance_input::seq_len;
}

}  // namespace

BalancingTerm seq_balancing_term() {
  return {.name = "seq", .coef_name = "seq_coef", .config_key = "moe.seq_aux_loss_coef",
          .coef = &BalancingConfig::seq_coef, .config_coef = &MoeConfig::seq_aux_loss_coef, .inputs = inputs,
          .tp = TpRule::mean_of_slices, .compute = compute};
}

}  // namespace moe

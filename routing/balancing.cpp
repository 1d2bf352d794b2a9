// Balancing losses (Switch, importance/load, z, sequence- and device-level) with their exact
// gradients, the load metrics and the aux-loss-free bias update, all in f64 on the host.
#include "routing/balancing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "src/util/check.h"

namespace moe {

namespace {

constexpr double k_inv_sqrt2 = 0.70710678118654752440;
constexpr double k_inv_sqrt_2pi = 0.39894228040143267794;

double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  double e = std::exp(x);
  return e / (1.0 + e);
}
double normal_cdf(double z) { return 0.5 * std::erfc(-z * k_inv_sqrt2); }
double normal_pdf(double z) { return k_inv_sqrt_2pi * std::exp(-0.5 * z * z); }

size_t idx(int64_t row, int64_t cols, int64_t col) { return static_cast<size_t>(row * cols + col); }

// CV(v)^2 = var(v) / mean(v)^2 with the population variance; grad[i] = d CV^2 / d v_i.
// A zero mean (nothing routed) gives 0 and a zero gradient rather than a division by zero.
double cv_squared(const std::vector<double>& v, std::vector<double>& grad) {
  const double n = static_cast<double>(v.size());
  grad.assign(v.size(), 0.0);
  double mean = std::accumulate(v.begin(), v.end(), 0.0) / n;
  if (mean == 0) return 0;
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  var /= n;
  // d var / d v_i = (2/n)(v_i - mean) (the mean's own derivative cancels: sum (v - mean) = 0);
  // d mean^-2 / d v_i = -2 mean^-3 / n.
  for (size_t i = 0; i < v.size(); ++i)
    grad[i] = 2.0 / n * (v[i] - mean) / (mean * mean) - 2.0 * var / (n * mean * mean * mean);
  return var / (mean * mean);
}

void check_size(const char* field, size_t got, int64_t expected, const char* expected_what,
                const char* who = "balancing") {
  MOE_CHECK(static_cast<int64_t>(got) == expected, who, ": ", field, " has ", got, " values, expected ",
            expected_what, " = ", expected);
}

void check_present(bool present, const char* coef, double value, const char* field, const char* why) {
  MOE_CHECK(present, "balancing: ", coef, " = ", value, " needs ", field, ", which is empty (", why, ")");
}

void check_coef(const char* name, double value) {
  MOE_CHECK(std::isfinite(value) && value >= 0, "balancing: ", name, " = ", value, ", expected a finite value >= 0");
}

// Every provided field has its size; every enabled term has the fields it reads.
void validate(const BalanceInputs& in, const BalancingConfig& c) {
  check_coef("switch_coef", c.switch_coef);
  check_coef("importance_coef", c.importance_coef);
  check_coef("load_coef", c.load_coef);
  check_coef("z_coef", c.z_coef);
  check_coef("seq_coef", c.seq_coef);
  check_coef("device_coef", c.device_coef);
  const int64_t T = in.tokens, E = in.experts, k = in.slots;
  MOE_CHECK(T >= 0, "balancing: tokens = ", T, ", expected >= 0");
  MOE_CHECK(E >= 1, "balancing: experts = ", E, ", expected >= 1");
  MOE_CHECK(k >= 1, "balancing: slots = ", k, ", expected >= 1");

  if (!in.scores.empty()) check_size("scores", in.scores.size(), T * E, "T*E");
  if (!in.logits.empty()) check_size("logits", in.logits.size(), T * E, "T*E");
  if (!in.weights.empty()) check_size("weights", in.weights.size(), T * k, "T*k");
  if (!in.ids.empty()) check_size("ids", in.ids.size(), T * k, "T*k");
  if (!in.counts.empty()) check_size("counts", in.counts.size(), E, "E");
  if (!in.clean.empty()) check_size("clean", in.clean.size(), T * E, "T*E");
  if (!in.raw_noise.empty()) check_size("raw_noise", in.raw_noise.size(), T * E, "T*E");
  if (!in.normal.empty()) check_size("normal", in.normal.size(), T * E, "T*E");
  for (size_t s = 0; s < in.ids.size(); ++s)
    MOE_CHECK(in.ids[s] >= -1 && in.ids[s] < E, "balancing: ids[", s, "] = ", in.ids[s], " is outside [-1, E = ", E,
              ")");
  for (size_t i = 0; i < in.counts.size(); ++i)
    MOE_CHECK(in.counts[i] >= 0, "balancing: counts[", i, "] = ", in.counts[i], " is negative");

  // An empty micro-batch (T = 0) has empty fields that are nonetheless the right size.
  auto has = [T](const auto& field) { return T == 0 || !field.empty(); };
  const char* no_scores = "hash routers have no scores";
  if (c.switch_coef > 0) {
    check_present(has(in.scores), "switch_coef", c.switch_coef, "scores", no_scores);
    check_present(has(in.counts), "switch_coef", c.switch_coef, "counts", "f_i comes from the counts");
  }
  if (c.importance_coef > 0) {
    check_present(has(in.weights), "importance_coef", c.importance_coef, "weights", "Importance sums them");
    check_present(has(in.ids), "importance_coef", c.importance_coef, "ids", "they say where each weight goes");
  }
  if (c.load_coef > 0) {
    std::string missing;
    for (auto [name, field] : {std::pair{"clean", &in.clean}, {"raw_noise", &in.raw_noise}, {"normal", &in.normal}})
      if (!has(*field)) missing += (missing.empty() ? "" : ", ") + std::string(name);
    MOE_CHECK(missing.empty(), "balancing: load_coef = ", c.load_coef,
              " needs the noisy-gating inputs clean, raw_noise and normal, but ", missing,
              " is empty: only a noisy top-k router provides the smooth load estimator's inputs");
    MOE_CHECK(k < E, "balancing: load_coef needs slots < experts (the k-th largest of the other E-1 experts), got k = ",
              k, ", E = ", E);
  }
  if (c.z_coef > 0) check_present(has(in.logits), "z_coef", c.z_coef, "logits", no_scores);
  if (c.seq_coef > 0) {
    check_present(has(in.scores), "seq_coef", c.seq_coef, "scores", no_scores);
    check_present(has(in.ids), "seq_coef", c.seq_coef, "ids", "f_i counts each sequence's selections");
    MOE_CHECK(in.seq_len >= 1 && T % in.seq_len == 0, "balancing: seq_len = ", in.seq_len,
              ", expected >= 1 and dividing tokens = ", T);
  }
  if (c.device_coef > 0) {
    check_present(has(in.scores), "device_coef", c.device_coef, "scores", no_scores);
    check_present(has(in.counts), "device_coef", c.device_coef, "counts", "f_i comes from the counts");
    MOE_CHECK(c.device_groups >= 1, "balancing: device_groups = ", c.device_groups, ", expected >= 1");
    MOE_CHECK(E % c.device_groups == 0, "balancing: device_groups = ", c.device_groups,
              " does not divide experts = ", E);
  }
}

// Switch / GShard: alpha * E * sum_i f_i P_i, f_i = counts_i / (k T), P_i = mean_t scores[t,i].
// d/dscores[t,i] = alpha * E * f_i / T.
double switch_term(const BalanceInputs& in, double alpha, std::vector<double>& dscores) {
  const int64_t T = in.tokens, E = in.experts;
  std::vector<double> sums(static_cast<size_t>(E), 0.0);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t i = 0; i < E; ++i) sums[static_cast<size_t>(i)] += in.scores[idx(r, E, i)];
  SwitchLoss loss = switch_loss(sums, in.counts, T, in.slots, alpha);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t i = 0; i < E; ++i) dscores[idx(r, E, i)] += loss.grad_per_expert[static_cast<size_t>(i)];
  return loss.value;
}

// Shazeer: w * CV(Importance)^2 with Importance_i = sum of the combine weights routed to i.
double importance_term(const BalanceInputs& in, double w, std::vector<double>& dweights) {
  std::vector<double> importance(static_cast<size_t>(in.experts), 0.0), grad;
  for (size_t s = 0; s < in.ids.size(); ++s)
    if (in.ids[s] >= 0) importance[static_cast<size_t>(in.ids[s])] += in.weights[s];
  double cv2 = cv_squared(importance, grad);
  for (size_t s = 0; s < in.ids.size(); ++s)
    if (in.ids[s] >= 0) dweights[s] += w * grad[static_cast<size_t>(in.ids[s])];
  return w * cv2;
}

// Shazeer's smooth load: P(x,i) = Phi((clean_i - thr_i) / softplus(raw_i)) with thr_i the k-th
// largest of h = clean + normal * softplus(raw) over the other experts; L = w * CV(Load)^2.
// thr_i is h_j of one expert j, so the gradient also flows into clean_j and raw_j.
double load_term(const BalanceInputs& in, double w, std::vector<double>& dclean, std::vector<double>& draw) {
  const int64_t T = in.tokens, E = in.experts, k = in.slots;
  std::vector<double> load(static_cast<size_t>(E), 0.0), sp(static_cast<size_t>(T * E)),
      h(static_cast<size_t>(T * E)), z(static_cast<size_t>(T * E));
  std::vector<int64_t> source(static_cast<size_t>(T * E));  // the expert whose h is thr_i
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t j = 0; j < E; ++j) {
      sp[idx(r, E, j)] = softplus(in.raw_noise[idx(r, E, j)]);
      h[idx(r, E, j)] = in.clean[idx(r, E, j)] + in.normal[idx(r, E, j)] * sp[idx(r, E, j)];
    }
    // Rank by h (ties: lower index first). Excluding i: if i is among the top k the k-th
    // largest of the rest is order[k], otherwise order[k-1].
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return h[idx(r, E, a)] > h[idx(r, E, b)]; });
    std::vector<bool> in_top(static_cast<size_t>(E), false);
    for (int64_t q = 0; q < k; ++q) in_top[static_cast<size_t>(order[q])] = true;
    for (int64_t i = 0; i < E; ++i) {
      int64_t j = in_top[static_cast<size_t>(i)] ? order[k] : order[k - 1];
      source[idx(r, E, i)] = j;
      z[idx(r, E, i)] = (in.clean[idx(r, E, i)] - h[idx(r, E, j)]) / sp[idx(r, E, i)];
      load[static_cast<size_t>(i)] += normal_cdf(z[idx(r, E, i)]);
    }
  }
  std::vector<double> dload;
  double cv2 = cv_squared(load, dload);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t i = 0; i < E; ++i) {
      size_t a = idx(r, E, i);
      size_t b = idx(r, E, source[a]);
      // dz/dclean_i = 1/sp_i; dz/draw_i = -z sigmoid(raw_i) / sp_i; dz/dthr = -1/sp_i with
      // dthr/dclean_j = 1 and dthr/draw_j = normal_j sigmoid(raw_j).
      double g = w * dload[static_cast<size_t>(i)] * normal_pdf(z[a]) / sp[a];
      dclean[a] += g;
      draw[a] -= g * z[a] * sigmoid(in.raw_noise[a]);
      dclean[b] -= g;
      draw[b] -= g * in.normal[b] * sigmoid(in.raw_noise[b]);
    }
  }
  return w * cv2;
}

// ST-MoE router z-loss: coef/T * sum_t lse_t^2; d/dlogits[t,j] = coef * 2 lse_t softmax_tj / T.
double z_term(const BalanceInputs& in, double coef, std::vector<double>& dlogits) {
  const int64_t T = in.tokens, E = in.experts;
  const double t = static_cast<double>(T);
  double value = 0;
  for (int64_t r = 0; r < T; ++r) {
    const double* row = &in.logits[idx(r, E, 0)];
    double m = *std::max_element(row, row + E);
    double sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += std::exp(row[j] - m);
    double lse = m + std::log(sum);
    value += coef * lse * lse / t;
    for (int64_t j = 0; j < E; ++j) dlogits[idx(r, E, j)] += coef * 2.0 * lse * std::exp(row[j] - lse) / t;
  }
  return value;
}

// DeepSeek-V3 sequence-level: per sequence of S tokens f_i = E/(kS) * #selections of i,
// P_i = mean_t s'_ti with s' the scores normalised per token; alpha * mean over sequences.
double seq_term(const BalanceInputs& in, double alpha, std::vector<double>& dscores) {
  const int64_t T = in.tokens, E = in.experts, k = in.slots, S = in.seq_len;
  const int64_t num_seqs = T / S;
  const double scale = alpha / static_cast<double>(num_seqs);
  double value = 0;
  std::vector<double> f(static_cast<size_t>(E)), row_sum(static_cast<size_t>(S));
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
        dscores[idx(r, E, m)] += (scale * f[static_cast<size_t>(m)] / static_cast<double>(S) - dot) / z;
    }
  }
  return value;
}

// DeepSeekMoE device-level over D contiguous groups: alpha2 * sum_g f'_g P'_g with
// f'_g = mean of f_i = E/(kT) counts_i over g and P'_g = sum of P_i = mean_t scores over g.
double device_term(const BalanceInputs& in, double alpha, int64_t groups, std::vector<double>& dscores) {
  const int64_t T = in.tokens, E = in.experts, G = E / groups;
  const double t = static_cast<double>(T);
  double value = 0;
  for (int64_t g = 0; g < groups; ++g) {
    double f_mean = 0, p_sum = 0;
    for (int64_t i = g * G; i < (g + 1) * G; ++i) {
      f_mean += static_cast<double>(E) / (static_cast<double>(in.slots) * t) * static_cast<double>(in.counts[i]);
      for (int64_t r = 0; r < T; ++r) p_sum += in.scores[idx(r, E, i)] / t;
    }
    f_mean /= static_cast<double>(G);
    value += alpha * f_mean * p_sum;
    for (int64_t i = g * G; i < (g + 1) * G; ++i)
      for (int64_t r = 0; r < T; ++r) dscores[idx(r, E, i)] += alpha * f_mean / t;
  }
  return value;
}

}  // namespace

BalanceResult compute_balancing(const BalanceInputs& in, const BalancingConfig& config) {
  validate(in, config);
  const auto TE = static_cast<size_t>(in.tokens * in.experts);
  BalanceResult out;
  if (config.switch_coef > 0 || config.seq_coef > 0 || config.device_coef > 0) out.dscores.assign(TE, 0.0);
  if (config.z_coef > 0) out.dlogits.assign(TE, 0.0);
  if (config.importance_coef > 0) out.dweights.assign(static_cast<size_t>(in.tokens * in.slots), 0.0);
  if (config.load_coef > 0) {
    out.dclean.assign(TE, 0.0);
    out.draw_noise.assign(TE, 0.0);
  }
  // An empty micro-batch has nothing to balance: every enabled term is 0 (and T*E = 0 grads).
  const bool empty = in.tokens == 0;
  if (config.switch_coef > 0) out.terms["switch"] = empty ? 0 : switch_term(in, config.switch_coef, out.dscores);
  if (config.importance_coef > 0)
    out.terms["importance"] = empty ? 0 : importance_term(in, config.importance_coef, out.dweights);
  if (config.load_coef > 0)
    out.terms["load"] = empty ? 0 : load_term(in, config.load_coef, out.dclean, out.draw_noise);
  if (config.z_coef > 0) out.terms["z"] = empty ? 0 : z_term(in, config.z_coef, out.dlogits);
  if (config.seq_coef > 0) out.terms["seq"] = empty ? 0 : seq_term(in, config.seq_coef, out.dscores);
  if (config.device_coef > 0)
    out.terms["device"] = empty ? 0 : device_term(in, config.device_coef, config.device_groups, out.dscores);
  for (const auto& [name, value] : out.terms) out.total += value;
  return out;
}

LoadStats load_stats(const std::vector<int64_t>& counts, const std::vector<double>& scores, int64_t experts) {
  MOE_CHECK(experts >= 1, "load_stats: experts = ", experts, ", expected >= 1");
  check_size("counts", counts.size(), experts, "E", "load_stats");
  MOE_CHECK(scores.size() % static_cast<size_t>(experts) == 0, "load_stats: scores has ", scores.size(),
            " values, expected a multiple of E = ", experts);
  LoadStats stats;
  std::vector<double> c(counts.begin(), counts.end()), unused;
  double mean = std::accumulate(c.begin(), c.end(), 0.0) / static_cast<double>(experts);
  if (mean > 0) {
    stats.cv = std::sqrt(cv_squared(c, unused));
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
    double h = 0;
    for (int64_t i = 0; i < experts; ++i)
      if (row[i] > 0) h -= row[i] / z * std::log(row[i] / z);
    stats.entropy += h / static_cast<double>(T);
  }
  return stats;
}

SwitchLoss switch_loss(const std::vector<double>& score_sums, const std::vector<int64_t>& counts, int64_t tokens,
                       int64_t slots, double alpha) {
  MOE_CHECK(score_sums.size() == counts.size(), "switch_loss: ", score_sums.size(), " score sums for ", counts.size(),
            " experts");
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1)), e = static_cast<double>(counts.size());
  SwitchLoss out;
  out.grad_per_expert.resize(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    double f = static_cast<double>(counts[i]) / (static_cast<double>(slots) * t);
    out.value += alpha * e * f * (score_sums[i] / t);
    out.grad_per_expert[i] = alpha * e * f / t;
  }
  return out;
}

void update_expert_bias(std::vector<double>& bias, const std::vector<int64_t>& loads, double gamma) {
  MOE_CHECK(bias.size() == loads.size(), "update_expert_bias: bias has ", bias.size(), " values, loads has ",
            loads.size(), " (one per expert each)");
  if (loads.empty()) return;
  // sign(load_i - mean) = sign(E load_i - sum) in integers: exact, so a balanced expert moves 0.
  const int64_t total = std::accumulate(loads.begin(), loads.end(), int64_t{0});
  const auto n = static_cast<int64_t>(loads.size());
  for (size_t i = 0; i < bias.size(); ++i) {
    int64_t diff = n * loads[i] - total;
    bias[i] -= gamma * static_cast<double>((diff > 0) - (diff < 0));
  }
}

}  // namespace moe

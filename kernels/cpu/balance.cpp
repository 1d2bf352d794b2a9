// CPU reference of the balancing losses from per-expert sums and per-slot inputs (Switch,
// device-level, importance, z, sequence-level), the expert counts and the bias update.
#include "kernels/cpu/balance.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

size_t at(int64_t row, int64_t cols, int64_t col) { return static_cast<size_t>(row * cols + col); }

void check_id(int32_t id, int64_t slot, int64_t num_experts, const char* who) {
  MOE_CHECK(id >= -1 && id < num_experts, who, ": expert id ", id, " of slot ", slot, " is outside [-1, ",
            num_experts, ")");
}

}  // namespace

void count_experts(const int32_t* ids, int64_t num_ids, int64_t num_experts, int64_t* counts) {
  for (int64_t n = 0; n < num_ids; ++n) {
    check_id(ids[n], n, num_experts, "count_experts");
    if (ids[n] >= 0) ++counts[ids[n]];
  }
}

double cv_squared(const double* v, int64_t n, double* grad) {
  const double count = static_cast<double>(n);
  std::fill(grad, grad + n, 0.0);
  const double mean = std::accumulate(v, v + n, 0.0) / count;
  if (mean == 0) return 0;
  double var = 0;
  for (int64_t i = 0; i < n; ++i) var += (v[i] - mean) * (v[i] - mean);
  var /= count;
  // d var / d v_i = (2/n)(v_i - mean) (the mean's own derivative cancels: sum (v - mean) = 0);
  // d mean^-2 / d v_i = -2 mean^-3 / n.
  for (int64_t i = 0; i < n; ++i)
    grad[i] = 2.0 / count * (v[i] - mean) / (mean * mean) - 2.0 * var / (count * mean * mean * mean);
  return var / (mean * mean);
}

template <typename T>
double switch_balance_from_counts(const T* score_sums, const int64_t* counts, int64_t tokens, int64_t slots,
                                  int64_t num_experts, double alpha, T* grad_row) {
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1)), e = static_cast<double>(num_experts);
  double total = 0;
  for (int64_t i = 0; i < num_experts; ++i) {
    const double f = static_cast<double>(counts[i]) / (static_cast<double>(slots) * t);
    total += alpha * e * f * (static_cast<double>(score_sums[i]) / t);
    grad_row[i] = static_cast<T>(alpha * e * f / t);
  }
  return total;
}

template <typename T>
double device_balance_from_counts(const T* score_sums, const int64_t* counts, int64_t tokens, int64_t slots,
                                  int64_t num_experts, int64_t groups, double alpha, T* grad_row) {
  MOE_CHECK(groups >= 1 && num_experts % groups == 0, "device_balance: ", groups, " groups do not divide ",
            num_experts, " experts");
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1));
  const int64_t size = num_experts / groups;
  double total = 0;
  for (int64_t g = 0; g < groups; ++g) {
    double f_mean = 0, p_sum = 0;
    for (int64_t i = g * size; i < (g + 1) * size; ++i) {
      f_mean += static_cast<double>(num_experts) / (static_cast<double>(slots) * t) * static_cast<double>(counts[i]);
      p_sum += static_cast<double>(score_sums[i]) / t;
    }
    f_mean /= static_cast<double>(size);
    total += alpha * f_mean * p_sum;
    for (int64_t i = g * size; i < (g + 1) * size; ++i) grad_row[i] = static_cast<T>(alpha * f_mean / t);
  }
  return total;
}

template <typename T>
void importance_balance(const T* weights, const int32_t* ids, int64_t num_slots, int64_t num_experts, double coef,
                        double* value, T* dweights) {
  std::vector<double> importance(static_cast<size_t>(num_experts), 0.0), grad(static_cast<size_t>(num_experts));
  for (int64_t s = 0; s < num_slots; ++s) {
    check_id(ids[s], s, num_experts, "importance_balance");
    if (ids[s] >= 0) importance[static_cast<size_t>(ids[s])] += static_cast<double>(weights[s]);
  }
  const double cv2 = cv_squared(importance.data(), num_experts, grad.data());
  for (int64_t s = 0; s < num_slots; ++s)
    if (ids[s] >= 0) dweights[s] = static_cast<T>(dweights[s] + coef * grad[static_cast<size_t>(ids[s])]);
  value[0] = coef * cv2;
}

template <typename T>
void z_balance(const T* logits, int64_t tokens, int64_t num_experts, double coef, double* value, T* dlogits) {
  const double t = static_cast<double>(tokens);
  std::vector<double> row(static_cast<size_t>(num_experts));
  double total = 0;
  for (int64_t r = 0; r < tokens; ++r) {
    for (int64_t j = 0; j < num_experts; ++j)
      row[static_cast<size_t>(j)] = static_cast<double>(logits[at(r, num_experts, j)]);
    const double m = *std::max_element(row.begin(), row.end());
    double sum = 0;
    for (double x : row) sum += std::exp(x - m);
    const double lse = m + std::log(sum);
    total += coef * lse * lse / t;
    for (int64_t j = 0; j < num_experts; ++j) {
      T& g = dlogits[at(r, num_experts, j)];
      g = static_cast<T>(g + coef * 2.0 * lse * std::exp(row[static_cast<size_t>(j)] - lse) / t);
    }
  }
  value[0] = total;
}

template <typename T>
void seq_balance(const T* scores, const int32_t* ids, int64_t tokens, int64_t num_experts, int64_t slots,
                 int64_t seq_len, double coef, double* value, T* dscores) {
  MOE_CHECK(seq_len >= 1 && tokens % seq_len == 0, "seq_balance: seq_len = ", seq_len, " does not divide tokens = ",
            tokens);
  const int64_t E = num_experts, k = slots, S = seq_len, num_seqs = tokens / seq_len;
  const double scale = num_seqs > 0 ? coef / static_cast<double>(num_seqs) : 0.0;
  double total = 0;
  std::vector<double> f(static_cast<size_t>(E));
  for (int64_t q = 0; q < num_seqs; ++q) {
    std::fill(f.begin(), f.end(), 0.0);
    for (int64_t n = q * S * k; n < (q + 1) * S * k; ++n) {
      check_id(ids[n], n, E, "seq_balance");
      if (ids[n] >= 0) f[static_cast<size_t>(ids[n])] += static_cast<double>(E) / static_cast<double>(k * S);
    }
    for (int64_t r = q * S; r < (q + 1) * S; ++r) {
      const T* row = &scores[at(r, E, 0)];
      double z = 0;
      for (int64_t i = 0; i < E; ++i) z += static_cast<double>(row[i]);
      MOE_CHECK(!(z <= 0), "balancing: scores of token ", r, " sum to ", z, ", cannot normalise them (seq loss)");
      // dL/ds'_ti = a_i = scale f_i / S; through s' = s / z: dL/ds_tm = (a_m - sum_i a_i s'_ti) / z.
      double dot = 0;
      for (int64_t i = 0; i < E; ++i)
        dot += scale * f[static_cast<size_t>(i)] / static_cast<double>(S) * static_cast<double>(row[i]) / z;
      total += dot;
      for (int64_t m = 0; m < E; ++m) {
        T& g = dscores[at(r, E, m)];
        g = static_cast<T>(g + (scale * f[static_cast<size_t>(m)] / static_cast<double>(S) - dot) / z);
      }
    }
  }
  value[0] = total;
}

template <typename T>
void update_expert_bias(T* bias, const int64_t* loads, int64_t num_experts, double gamma, const float* skip) {
  if (skip != nullptr && std::isnan(*skip)) return;
  // sign(load_i - mean) = sign(E load_i - sum) in integers: exact, so a balanced expert moves 0.
  const int64_t total = std::accumulate(loads, loads + num_experts, int64_t{0});
  for (int64_t i = 0; i < num_experts; ++i) {
    const int64_t diff = num_experts * loads[i] - total;
    bias[i] = static_cast<T>(static_cast<double>(bias[i]) - gamma * static_cast<double>((diff > 0) - (diff < 0)));
  }
}

#define MOE_BALANCE_INSTANTIATE(T)                                                                                   \
  template double switch_balance_from_counts<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, double, T*);   \
  template double device_balance_from_counts<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t,       \
                                                double, T*);                                                       \
  template void importance_balance<T>(const T*, const int32_t*, int64_t, int64_t, double, double*, T*);             \
  template void z_balance<T>(const T*, int64_t, int64_t, double, double*, T*);                                      \
  template void seq_balance<T>(const T*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double, double*, T*);  \
  template void update_expert_bias<T>(T*, const int64_t*, int64_t, double, const float*);
MOE_BALANCE_INSTANTIATE(float)
MOE_BALANCE_INSTANTIATE(double)
#undef MOE_BALANCE_INSTANTIATE

}  // namespace moe::cpu

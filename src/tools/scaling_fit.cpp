// The Chinchilla approach-3 fit (Hoffmann et al. 2022, appendix D.2): Huber loss of log-loss
// residuals in (a, b, e, α, β), minimised by L-BFGS from a grid of starts; the best start wins.
#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <limits>
#include <utility>
#include <vector>

#include "src/tools/scaling_law.h"
#include "src/util/check.h"

namespace moe {

namespace {

using Vec5 = std::array<double, 5>;  // (a, b, e, α, β)

double dot(const Vec5& u, const Vec5& v) {
  double s = 0;
  for (int i = 0; i < 5; ++i) s += u[i] * v[i];
  return s;
}

// The rows as the objective reads them: log N, log D, log L (computed once per fit).
struct LogRow {
  double log_n, log_d, log_l;
};
std::vector<LogRow> log_rows(const std::vector<LossObservation>& rows) {
  std::vector<LogRow> out;
  for (const LossObservation& row : rows) out.push_back({std::log(row.params), std::log(row.tokens), std::log(row.loss)});
  return out;
}

double objective(const std::vector<LogRow>& rows, const Vec5& x, double delta, Vec5& grad) {
  const double a = x[0], b = x[1], e = x[2], alpha = x[3], beta = x[4];
  double total = 0;
  grad.fill(0);
  for (const LogRow& row : rows) {
    double t[3] = {a - alpha * row.log_n, b - beta * row.log_d, e};
    double top = std::max({t[0], t[1], t[2]});
    double w[3], sum = 0;
    for (int k = 0; k < 3; ++k) sum += (w[k] = std::exp(t[k] - top));
    double r = top + std::log(sum) - row.log_l;  // log L̂ − log L
    // Huber: r²/2 inside ±δ, δ(|r| − δ/2) outside; its derivative is r clamped to ±δ.
    total += std::abs(r) <= delta ? 0.5 * r * r : delta * (std::abs(r) - 0.5 * delta);
    double dr = std::clamp(r, -delta, delta) / sum;  // times the softmax d LSE / d t_k = w_k / sum
    grad[0] += dr * w[0];
    grad[1] += dr * w[1];
    grad[2] += dr * w[2];
    grad[3] -= dr * w[0] * row.log_n;
    grad[4] -= dr * w[1] * row.log_d;
  }
  return total;
}

// L-BFGS direction -H g by the two-loop recursion over the stored (s, y) pairs.
Vec5 lbfgs_direction(const Vec5& g, const std::deque<std::pair<Vec5, Vec5>>& history) {
  Vec5 q = g;
  std::vector<double> rho(history.size()), alpha(history.size());
  for (size_t k = history.size(); k-- > 0;) {
    const auto& [s, y] = history[k];
    rho[k] = 1.0 / dot(y, s);
    alpha[k] = rho[k] * dot(s, q);
    for (int i = 0; i < 5; ++i) q[i] -= alpha[k] * y[i];
  }
  double gamma = history.empty() ? 1.0 : dot(history.back().first, history.back().second) /
                                            dot(history.back().second, history.back().second);
  for (int i = 0; i < 5; ++i) q[i] *= gamma;
  for (size_t k = 0; k < history.size(); ++k) {
    const auto& [s, y] = history[k];
    double beta = rho[k] * dot(y, q);
    for (int i = 0; i < 5; ++i) q[i] += s[i] * (alpha[k] - beta);
  }
  for (int i = 0; i < 5; ++i) q[i] = -q[i];
  return q;
}

// One L-BFGS run (memory 10, backtracking Armijo line search) from x; returns the objective at
// the point it stops: gradient below 1e-12 in max norm, no progress, or max_iterations.
double minimise(const std::vector<LogRow>& rows, double delta, int max_iterations, Vec5& x) {
  Vec5 g;
  double f = objective(rows, x, delta, g);
  if (!std::isfinite(f)) return f;
  std::deque<std::pair<Vec5, Vec5>> history;
  for (int it = 0; it < max_iterations; ++it) {
    double gmax = 0;
    for (double v : g) gmax = std::max(gmax, std::abs(v));
    if (gmax < 1e-12) break;
    Vec5 d = lbfgs_direction(g, history);
    double slope = dot(d, g);
    if (!(slope < 0)) {  // not a descent direction: restart from steepest descent
      history.clear();
      for (int i = 0; i < 5; ++i) d[i] = -g[i];
      slope = -dot(g, g);
    }
    double step = 1.0, f_new = f;
    Vec5 x_new, g_new;
    bool accepted = false;
    for (int tries = 0; tries < 60; ++tries, step *= 0.5) {
      for (int i = 0; i < 5; ++i) x_new[i] = x[i] + step * d[i];
      f_new = objective(rows, x_new, delta, g_new);
      if (std::isfinite(f_new) && f_new <= f + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
    }
    if (!accepted) break;
    Vec5 s, y;
    for (int i = 0; i < 5; ++i) s[i] = x_new[i] - x[i], y[i] = g_new[i] - g[i];
    if (dot(s, y) > 1e-300) {  // keep the curvature pair only when it is positive
      history.emplace_back(s, y);
      if (history.size() > 10) history.pop_front();
    }
    bool stalled = f - f_new <= 1e-16 * std::max(1.0, std::abs(f));
    x = x_new, g = g_new, f = f_new;
    if (stalled && gmax < 1e-8) break;
  }
  return f;
}

}  // namespace

double huber_objective(const std::vector<LossObservation>& rows, const double x[5], double delta,
                       double grad[5]) {
  Vec5 g, at{x[0], x[1], x[2], x[3], x[4]};
  double f = objective(log_rows(rows), at, delta, g);
  for (int i = 0; i < 5; ++i) grad[i] = g[i];
  return f;
}

FitResult fit_chinchilla(const std::vector<LossObservation>& rows, const FitOptions& options) {
  MOE_CHECK(rows.size() >= 5, "the fit needs at least 5 (params, tokens, loss) rows, one per constant "
            "(E, A, B, alpha, beta); got ", rows.size());
  bool params_vary = false, tokens_vary = false;
  for (const LossObservation& row : rows) {
    params_vary |= row.params != rows[0].params;
    tokens_vary |= row.tokens != rows[0].tokens;
  }
  MOE_CHECK(params_vary && tokens_vary, "the fit needs at least two distinct params and two distinct tokens values");
  MOE_CHECK(options.huber_delta > 0, "huber_delta must be positive, got ", options.huber_delta);
  std::vector<LogRow> logs = log_rows(rows);
  FitResult best;
  best.objective = std::numeric_limits<double>::infinity();
  for (double alpha : options.alpha_grid)
    for (double beta : options.beta_grid)
      for (double e : options.e_grid)
        for (double a : options.a_grid)
          for (double b : options.b_grid) {
            Vec5 x{a, b, e, alpha, beta};
            double f = minimise(logs, options.huber_delta, options.max_iterations, x);
            ++best.num_starts;
            if (!(f < best.objective)) continue;
            best.objective = f;
            best.law = {std::exp(x[2]), std::exp(x[0]), std::exp(x[1]), x[3], x[4]};
          }
  MOE_CHECK(std::isfinite(best.objective), "the fit found no finite objective from any start");
  return best;
}

}  // namespace moe

// Chinchilla approaches 1 (envelope) and 2 (IsoFLOP parabolas) and their power laws N_opt(C);
// the run directories' curves and final losses they read (docs/scaling_laws.md).
#include "src/tools/scaling_isoflop.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/tools/plan.h"
#include "src/util/check.h"

namespace moe {

double PowerLaw::at(double x) const { return coefficient * std::pow(x, exponent); }

PowerLaw fit_power_law(const std::vector<double>& x, const std::vector<double>& y) {
  MOE_CHECK(x.size() == y.size(), "power law: ", x.size(), " x values for ", y.size(), " y values");
  std::set<double> distinct(x.begin(), x.end());
  MOE_CHECK(distinct.size() >= 2, "power law: needs at least 2 distinct x values, got ", distinct.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    MOE_CHECK(x[i] > 0 && y[i] > 0, "power law: values must be positive, got (", x[i], ", ", y[i], ")");
    double lx = std::log(x[i]), ly = std::log(y[i]);
    sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly;
  }
  double n = static_cast<double>(x.size());
  double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  return {std::exp((sy - slope * sx) / n), slope};
}

namespace {

// Least squares y = a x^2 + b x + c (x centred for conditioning, then shifted back).
void fit_parabola(const std::vector<double>& x, const std::vector<double>& y, double& a, double& b, double& c) {
  double mean = 0;
  for (double v : x) mean += v / static_cast<double>(x.size());
  double s[5] = {}, t[3] = {};  // sums of u^k and of y u^k
  for (size_t i = 0; i < x.size(); ++i) {
    double u = x[i] - mean, p = 1;
    for (int k = 0; k < 5; ++k, p *= u) {
      s[k] += p;
      if (k < 3) t[k] += y[i] * p;
    }
  }
  // Normal equations [s4 s3 s2; s3 s2 s1; s2 s1 s0] (A, B, C) = (t2, t1, t0), by Cramer's rule.
  double m[3][3] = {{s[4], s[3], s[2]}, {s[3], s[2], s[1]}, {s[2], s[1], s[0]}}, r[3] = {t[2], t[1], t[0]};
  auto det = [](double q[3][3]) {
    return q[0][0] * (q[1][1] * q[2][2] - q[1][2] * q[2][1]) - q[0][1] * (q[1][0] * q[2][2] - q[1][2] * q[2][0]) +
           q[0][2] * (q[1][0] * q[2][1] - q[1][1] * q[2][0]);
  };
  double d = det(m), coef[3];
  for (int j = 0; j < 3; ++j) {
    double q[3][3];
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 3; ++k) q[i][k] = k == j ? r[i] : m[i][k];
    coef[j] = det(q) / d;
  }
  // A u^2 + B u + C with u = x - mean.
  a = coef[0];
  b = coef[1] - 2 * coef[0] * mean;
  c = coef[0] * mean * mean - coef[1] * mean + coef[2];
}

void fit_budget(IsoflopBudget& budget) {
  std::sort(budget.runs.begin(), budget.runs.end(),
            [](const LossObservation& p, const LossObservation& q) { return p.params < q.params; });
  double log_c = 0;
  std::vector<double> x, y;
  std::set<double> distinct;
  for (const LossObservation& r : budget.runs) {
    log_c += std::log(training_flops(r.params, r.tokens)) / static_cast<double>(budget.runs.size());
    x.push_back(std::log(r.params));
    y.push_back(r.loss);
    distinct.insert(r.params);
  }
  budget.flops = std::exp(log_c);
  if (distinct.size() < 3) return;
  fit_parabola(x, y, budget.a, budget.b, budget.c);
  if (!(budget.a > 0)) return;
  double vertex = -budget.b / (2 * budget.a);
  budget.has_optimum = true;
  budget.params_opt = std::exp(vertex);
  budget.loss_opt = budget.a * vertex * vertex + budget.b * vertex + budget.c;
}

}  // namespace

IsoflopFit fit_isoflop(const std::vector<LossObservation>& rows, double tolerance) {
  MOE_CHECK(tolerance > 0, "isoflop: the budget tolerance must be positive, got ", tolerance);
  MOE_CHECK(!rows.empty(), "isoflop: no runs");
  std::vector<LossObservation> sorted = rows;
  auto flops = [](const LossObservation& r) { return training_flops(r.params, r.tokens); };
  std::sort(sorted.begin(), sorted.end(),
            [&](const LossObservation& p, const LossObservation& q) { return flops(p) < flops(q); });
  IsoflopFit fit;
  double group_start = 0;
  for (const LossObservation& r : sorted) {
    if (fit.budgets.empty() || flops(r) > group_start * (1 + tolerance)) {
      fit.budgets.emplace_back();
      group_start = flops(r);
    }
    fit.budgets.back().runs.push_back(r);
  }
  std::vector<double> cs, ns, ds;
  for (IsoflopBudget& budget : fit.budgets) {
    fit_budget(budget);
    if (!budget.has_optimum) continue;
    cs.push_back(budget.flops);
    ns.push_back(budget.params_opt);
    ds.push_back(budget.flops / (6 * budget.params_opt));
  }
  fit.num_optima = static_cast<int>(cs.size());
  if (fit.num_optima >= 2) {
    fit.params_opt = fit_power_law(cs, ns);
    fit.tokens_opt = fit_power_law(cs, ds);
  }
  return fit;
}

namespace {

// The curve's loss at ln C (linear in ln C between its points), or NaN outside its range.
double curve_loss_at(const LossCurve& curve, double log_c, double slack) {
  const auto& p = curve.points;
  auto log_flops = [&](size_t i) { return std::log(training_flops(p[i].params, p[i].tokens)); };
  if (p.empty() || log_c < log_flops(0) - slack || log_c > log_flops(p.size() - 1) + slack) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  if (log_c <= log_flops(0)) return p.front().loss;
  for (size_t i = 1; i < p.size(); ++i) {
    if (log_c <= log_flops(i)) {
      double t = (log_c - log_flops(i - 1)) / (log_flops(i) - log_flops(i - 1));
      return p[i - 1].loss + t * (p[i].loss - p[i - 1].loss);
    }
  }
  return p.back().loss;
}

}  // namespace

EnvelopeFit fit_envelope(const std::vector<LossCurve>& curves, int num_grid, double tolerance) {
  MOE_CHECK(num_grid >= 2, "envelope: needs a grid of at least 2 budgets, got ", num_grid);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const LossCurve& curve : curves) {
    for (const LossObservation& p : curve.points) {
      double log_c = std::log(training_flops(p.params, p.tokens));
      lo = std::min(lo, log_c), hi = std::max(hi, log_c);
    }
  }
  MOE_CHECK(lo < hi, "envelope: the curves span no range of compute (need points at 2 or more budgets)");
  EnvelopeFit fit;
  std::vector<double> cs, ns, ds;
  std::set<double> sizes;
  double slack = std::log1p(tolerance);
  for (int g = 0; g < num_grid; ++g) {
    double log_c = lo + (hi - lo) * g / (num_grid - 1);
    const LossCurve* best = nullptr;
    double best_loss = std::numeric_limits<double>::infinity();
    for (const LossCurve& curve : curves) {
      bool one_point = curve.points.size() == 1;
      double loss = curve_loss_at(curve, log_c, one_point ? slack : 0.0);
      if (loss < best_loss) best_loss = loss, best = &curve;
    }
    if (!best) continue;
    double c = std::exp(log_c), n = best->points.front().params;
    fit.points.push_back({c, n, c / (6 * n), best_loss, best->name});
    cs.push_back(c), ns.push_back(n), ds.push_back(c / (6 * n));
    sizes.insert(n);
  }
  fit.num_sizes = static_cast<int>(sizes.size());
  if (fit.num_sizes >= 2) {
    fit.params_opt = fit_power_law(cs, ns);
    fit.tokens_opt = fit_power_law(cs, ds);
  }
  return fit;
}

int64_t params_used_per_token(const ParamCounts& counts) {
  return counts.total - counts.buffers - (counts.matmul_total - counts.active);
}

RunScalingData read_scaling_run(const std::string& run_dir) {
  namespace fs = std::filesystem;
  MOE_CHECK(fs::is_directory(run_dir), "scaling: run directory ", run_dir, " does not exist");
  std::string config_path = (fs::path(run_dir) / "config.toml").string();
  std::string metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();
  MOE_CHECK(fs::is_regular_file(config_path), "scaling: ", run_dir, " has no config.toml (not a moe train run_dir)");
  MOE_CHECK(fs::is_regular_file(metrics_path), "scaling: ", run_dir, " has no metrics.jsonl");
  Config config = load_config(config_path);
  ParamCounts counts = count_params(config.model, config.moe);
  double n = static_cast<double>(params_used_per_token(counts));
  RunScalingData out;
  out.curve.name = fs::path(run_dir).lexically_normal().string();
  std::ifstream file(metrics_path);
  std::string line;
  double tokens_per_step = 0, val_loss = 0, val_step = 0;
  for (int number = 1; std::getline(file, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    MOE_CHECK(!record.is_discarded() && record.is_object(), metrics_path, ":", number, ": not a JSON object");
    if (record.contains("val_loss")) {
      val_loss = record["val_loss"].get<double>();
      val_step = record["step"].get<double>();
    } else if (record.contains("loss") && record.contains("tokens_seen") && record.value("step", 0) > 0) {
      double tokens = record["tokens_seen"].get<double>();
      tokens_per_step = tokens / record["step"].get<double>();
      out.curve.points.push_back({n, tokens, record["loss"].get<double>()});
    }
  }
  MOE_CHECK(!out.curve.points.empty(), "scaling: ", metrics_path, " has no step records with loss and tokens_seen");
  MOE_CHECK(val_step > 0, "scaling: ", metrics_path, " has no val_loss record (the run did not finish its evaluation)");
  out.final_row = {n, val_step * tokens_per_step, val_loss};
  return out;
}

}  // namespace moe

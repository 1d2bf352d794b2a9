// Chinchilla approaches 1 and 2 (Hoffmann et al. 2022): the envelope of training curves and the
// IsoFLOP parabolas, each ending in a power law N_opt(C); and the runs they read (run dirs, CSV).
#pragma once

#include <string>
#include <vector>

#include "src/tools/plan.h"
#include "src/tools/scaling_law.h"

namespace moe {

// y = coefficient · x^exponent, fitted by least squares of log y on log x.
struct PowerLaw {
  double coefficient = 0, exponent = 0;
  double at(double x) const;
};
// Needs as many x as y, at least two distinct x, all x and y positive.
PowerLaw fit_power_law(const std::vector<double>& x, const std::vector<double>& y);

// ---- approach 2: IsoFLOP profiles ----

// The runs of one compute budget C = 6 N D and the parabola L = a (ln N)^2 + b ln N + c through them.
struct IsoflopBudget {
  double flops = 0;                   // the geometric mean of its runs' 6 N D
  std::vector<LossObservation> runs;  // sorted by N
  double a = 0, b = 0, c = 0;         // the parabola (a > 0 has a minimum)
  bool has_optimum = false;           // a > 0 and at least 3 distinct N
  double params_opt = 0, loss_opt = 0;  // exp(-b / 2a) and the parabola there
};
struct IsoflopFit {
  std::vector<IsoflopBudget> budgets;  // ascending C
  PowerLaw params_opt, tokens_opt;     // N_opt(C), D_opt(C) over the budgets with an optimum
  int num_optima = 0;                  // budgets with an optimum; the power laws need 2
};
// Groups rows by C = 6 N D: runs whose C is within a factor (1 + tolerance) of a group's first
// (smallest) C join it. Each group of ≥ 3 distinct N gets a parabola in ln N; its vertex is the
// optimum if the parabola opens upward. Needs 2 budgets with an optimum for the power laws.
IsoflopFit fit_isoflop(const std::vector<LossObservation>& rows, double tolerance = 0.1);

// ---- approach 1: the envelope of training curves ----

// One run's loss along training: points of (N, tokens so far, loss), ascending tokens.
struct LossCurve {
  std::string name;
  std::vector<LossObservation> points;
};
struct EnvelopePoint {
  double flops = 0, params = 0, tokens = 0, loss = 0;  // the run with the lowest loss at C
  std::string run;
};
struct EnvelopeFit {
  std::vector<EnvelopePoint> points;  // one per C of the grid that a curve covers
  PowerLaw params_opt, tokens_opt;
  int num_sizes = 0;                  // distinct N among the points (the power laws need 2)
};
// At each of `num_grid` log-spaced C between the smallest and the largest 6 N D of the curves,
// the curve with the lowest loss there (linear in ln C between its points; a curve counts only
// within its own range of C, widened by the factor 1 + tolerance for one-point curves) gives
// N_opt(C); then the power laws through them.
EnvelopeFit fit_envelope(const std::vector<LossCurve>& curves, int num_grid = 40, double tolerance = 0.1);

// ---- the runs ----

// Chinchilla's N of a model: every parameter a token uses, embeddings included (all of a dense
// model; an MoE model without the routed experts its tokens skip).
int64_t params_used_per_token(const ParamCounts& counts);

// A run directory (moe train's run_dir): N from its config.toml (the parameters a token uses,
// embeddings included, as `moe scaling optimal` counts them), its training-loss curve from
// metrics.jsonl's step records (tokens_seen, loss) and its final row from the last val_loss
// record (D = that step's tokens). Errors name the directory and what is missing.
struct RunScalingData {
  LossCurve curve;
  LossObservation final_row;
};
RunScalingData read_scaling_run(const std::string& run_dir);

}  // namespace moe

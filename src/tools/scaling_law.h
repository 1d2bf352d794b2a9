// Scaling laws for planning runs (`moe scaling`): Kaplan et al. 2020 and Chinchilla (Hoffmann et
// al. 2022, approach 3) loss predictions, compute-optimal allocations and the Huber fit of the
// Chinchilla form to observed (params, tokens, loss) rows. docs/scaling_laws.md has the formulas.
#pragma once

#include <string>
#include <vector>

namespace moe {

// Training compute of a dense transformer: C = 6 N D FLOPs (N parameters, D tokens).
double training_flops(double params, double tokens);

// ---- Kaplan et al. 2020 (N: non-embedding parameters, D: tokens; loss in nats/token) ----

struct KaplanLaw {
  double n_c = 8.8e13, alpha_n = 0.076;
  double d_c = 5.4e13, alpha_d = 0.095;
};
double kaplan_loss_params(const KaplanLaw& law, double params);  // (N_c/N)^α_N
double kaplan_loss_tokens(const KaplanLaw& law, double tokens);  // (D_c/D)^α_D
// [(N_c/N)^(α_N/α_D) + D_c/D]^α_D
double kaplan_loss(const KaplanLaw& law, double params, double tokens);

// ---- Chinchilla approach 3: L(N, D) = E + A / N^α + B / D^β ----

struct ChinchillaLaw {
  double e = 0, a = 0, b = 0, alpha = 0, beta = 0;  // E, A, B, α, β
};
ChinchillaLaw hoffmann_law();    // Hoffmann et al. 2022: 1.69, 406.4, 410.7, 0.34, 0.28
ChinchillaLaw besiroglu_law();   // Besiroglu et al. 2024: 1.8172, 482.01, 2085.43, 0.3478, 0.3658
double chinchilla_loss(const ChinchillaLaw& law, double params, double tokens);

// A training budget split into parameters and tokens, with C = 6 N D.
struct Allocation {
  double flops = 0, params = 0, tokens = 0;
  double tokens_per_param() const { return tokens / params; }
};
// The minimum of L(N, D) on 6 N D = C: N_opt = G (C/6)^(β/(α+β)), D_opt = (C/6) / N_opt,
// G = (α A / (β B))^(1/(α+β)). Requires flops > 0 and α, β > 0.
Allocation compute_optimal(const ChinchillaLaw& law, double flops);
// G of the rule above, (α A / (β B))^(1/(α+β)); its exponent is β/(α+β).
double optimum_coefficient(const ChinchillaLaw& law);
// A fixed ratio r = D/N (approach-1 style rule of thumb, e.g. r = 20): N = sqrt(C / (6 r)).
Allocation allocate_by_ratio(double flops, double tokens_per_param);

// ---- the fit (Hoffmann et al. 2022, appendix D.2) ----

struct LossObservation {
  double params = 0, tokens = 0, loss = 0;
};

// Minimises sum_i Huber_δ(log L̂_i − log L_i) with log L̂ = LSE(a − α log N, b − β log D, e),
// A = exp(a), B = exp(b), E = exp(e), by L-BFGS from every point of a grid of starts; the
// lowest objective wins. The default grid is the paper's: α, β ∈ {0, 0.5, ..., 2},
// e ∈ {-1, -0.5, ..., 1}, a, b ∈ {0, 5, ..., 25} (4500 starts).
struct FitOptions {
  double huber_delta = 1e-3;
  std::vector<double> alpha_grid{0, 0.5, 1, 1.5, 2}, beta_grid{0, 0.5, 1, 1.5, 2};
  std::vector<double> e_grid{-1, -0.5, 0, 0.5, 1};
  std::vector<double> a_grid{0, 5, 10, 15, 20, 25}, b_grid{0, 5, 10, 15, 20, 25};
  int max_iterations = 1000;  // L-BFGS iterations per start
};
struct FitResult {
  ChinchillaLaw law;
  double objective = 0;  // the summed Huber loss at the result
  int num_starts = 0;
};
// Needs at least 5 rows (one per fitted constant), two distinct N and two distinct D.
FitResult fit_chinchilla(const std::vector<LossObservation>& rows, const FitOptions& options = {});
// The objective and its gradient in (a, b, e, α, β) at x; the fit's building block, exposed
// for the gradient check.
double huber_objective(const std::vector<LossObservation>& rows, const double x[5], double delta,
                       double grad[5]);

// The field (JSON) or header column (CSV) names of N, D and the loss, e.g. loss = "val_loss" for
// experiments/run_study.sh's results.csv.
struct LossColumns {
  std::string params = "params", tokens = "tokens", loss = "loss";
};
// Rows from text: JSON lines ({"params": N, "tokens": D, "loss": L} per line) or CSV (a header
// naming the three columns in any order, other columns ignored, or three unnamed columns in
// that order). Blank lines and lines starting with '#' are skipped. `source` names the text in
// errors (FILE:LINE).
std::vector<LossObservation> parse_loss_observations(const std::string& text, const std::string& source,
                                                     const LossColumns& columns = {});
std::vector<LossObservation> read_loss_observations(const std::string& path, const LossColumns& columns = {});

}  // namespace moe

// Chinchilla approaches 1 and 2 (`moe scaling isoflop`): power laws and parabolas recovered from
// synthetic runs of a known law (N_opt ∝ C^(β/(α+β))), budget grouping, and run directories.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "src/tools/scaling_isoflop.h"
#include "src/util/check.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

const ChinchillaLaw k_law = hoffmann_law();
const double k_exponent = k_law.beta / (k_law.alpha + k_law.beta);  // 0.4516

// Runs of 9 sizes per budget, a factor 2 apart, centred off the true optimum (× 1.3).
std::vector<LossObservation> isoflop_runs(const std::vector<double>& budgets) {
  std::vector<LossObservation> rows;
  for (double c : budgets) {
    double centre = 1.3 * compute_optimal(k_law, c).params;
    for (int k = -4; k <= 4; ++k) {
      double n = centre * std::pow(2.0, k), d = c / (6 * n);
      rows.push_back({n, d, chinchilla_loss(k_law, n, d)});
    }
  }
  return rows;
}

}  // namespace

TEST_CASE("a power law is recovered exactly and refuses one distinct x", "[scaling]") {
  PowerLaw law = fit_power_law({1e3, 1e4, 1e5}, {2 * std::pow(1e3, 0.7), 2 * std::pow(1e4, 0.7), 2 * std::pow(1e5, 0.7)});
  CHECK(law.exponent == Approx(0.7).epsilon(1e-12));
  CHECK(law.coefficient == Approx(2).epsilon(1e-9));
  CHECK(law.at(1e6) == Approx(2 * std::pow(1e6, 0.7)).epsilon(1e-9));
  CHECK_THROWS_WITH(fit_power_law({5, 5}, {1, 2}), Contains("at least 2 distinct x values, got 1"));
  CHECK_THROWS_WITH(fit_power_law({1, 2}, {1, -2}), Contains("values must be positive"));
}

TEST_CASE("approach 2: IsoFLOP parabolas give the optimum per budget and the law's exponent", "[scaling]") {
  std::vector<double> budgets{1e18, 1e19, 1e20, 1e21};
  IsoflopFit fit = fit_isoflop(isoflop_runs(budgets));
  REQUIRE(fit.budgets.size() == 4);
  REQUIRE(fit.num_optima == 4);
  for (size_t i = 0; i < budgets.size(); ++i) {
    const IsoflopBudget& b = fit.budgets[i];
    CHECK(b.flops == Approx(budgets[i]).epsilon(1e-9));
    CHECK(b.runs.size() == 9);
    // The parabola's vertex: within 15% of the true optimum on 6 N D = C, its loss within 0.5%.
    Allocation truth = compute_optimal(k_law, budgets[i]);
    CHECK(std::abs(std::log(b.params_opt / truth.params)) < std::log(1.15));
    CHECK(b.loss_opt == Approx(chinchilla_loss(k_law, truth.params, truth.tokens)).epsilon(5e-3));
  }
  // Every isoFLOP profile has the same shape in ln N - ln N_opt(C): the vertex's offset cancels.
  CHECK(fit.params_opt.exponent == Approx(k_exponent).margin(1e-3));
  CHECK(fit.tokens_opt.exponent == Approx(1 - k_exponent).margin(1e-3));
}

TEST_CASE("approach 2: budgets are grouped by C within the tolerance; too few sizes give no optimum", "[scaling]") {
  std::vector<LossObservation> rows = isoflop_runs({1e18, 1e20});
  rows[3].tokens *= 1.05;  // 5% off its budget: still in it at tolerance 0.1
  IsoflopFit fit = fit_isoflop(rows, 0.1);
  CHECK(fit.budgets.size() == 2);
  CHECK(fit_isoflop(rows, 0.01).budgets.size() == 3);
  IsoflopFit two_sizes = fit_isoflop({rows[0], rows[1], rows[9], rows[10]});
  CHECK(two_sizes.num_optima == 0);
  CHECK(two_sizes.params_opt.exponent == 0);
  CHECK_THROWS_WITH(fit_isoflop(rows, 0), Contains("tolerance must be positive"));
  CHECK_THROWS_WITH(fit_isoflop({}), Contains("isoflop: no runs"));
}

TEST_CASE("approach 1: the envelope of training curves recovers the law's exponent", "[scaling]") {
  std::vector<LossCurve> curves;
  for (int i = 0; i < 50; ++i) {  // N from 1e6 to 1e11, each trained from 1e7 to 1e13 tokens
    double n = 1e6 * std::pow(1e5, i / 49.0);
    LossCurve curve{"n" + std::to_string(i), {}};
    for (int j = 0; j < 80; ++j) {
      double d = 1e7 * std::pow(1e6, j / 79.0);
      curve.points.push_back({n, d, chinchilla_loss(k_law, n, d)});
    }
    curves.push_back(curve);
  }
  EnvelopeFit fit = fit_envelope(curves, 400);
  // Away from the edges of the grid of sizes: C from 1e18 to 1e21.
  std::vector<double> cs, ns;
  for (const EnvelopePoint& p : fit.points) {
    if (p.flops < 1e18 || p.flops > 1e21) continue;
    cs.push_back(p.flops), ns.push_back(p.params);
    CHECK(std::abs(std::log(p.params / compute_optimal(k_law, p.flops).params)) < std::log(1.3));
    CHECK(p.loss == Approx(chinchilla_loss(k_law, p.params, p.flops / (6 * p.params))).epsilon(1e-3));
  }
  REQUIRE(cs.size() > 50);
  CHECK(fit_power_law(cs, ns).exponent == Approx(k_exponent).margin(0.02));
  CHECK(fit.num_sizes > 10);
}

TEST_CASE("approach 1 on final rows only: the best run of each budget", "[scaling]") {
  std::vector<LossCurve> curves;
  for (const LossObservation& row : isoflop_runs({1e18, 1e21})) curves.push_back({"r", {row}});
  EnvelopeFit fit = fit_envelope(curves, 2);
  REQUIRE(fit.points.size() == 2);
  CHECK(fit.num_sizes == 2);
  CHECK(fit.params_opt.exponent == Approx(k_exponent).margin(0.1));
  CHECK_THROWS_WITH(fit_envelope({curves[0]}, 2), Contains("span no range of compute"));
}

TEST_CASE("a run directory gives N from its config, its curve and its final validation loss", "[scaling]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("scaling_run_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  CHECK_THROWS_WITH(read_scaling_run((dir / "nope").string()), Contains("does not exist"));
  CHECK_THROWS_WITH(read_scaling_run(dir.string()), Contains("has no config.toml"));
  // tests/cli/scaling.sh's model by hand: 108704 parameters, all used by every token.
  std::ofstream(dir / "config.toml") << "[model]\nvocab_size = 64\nd_model = 32\nnum_layers = 2\nnum_heads = 2\n"
                                        "num_kv_heads = 2\nd_ff = 512\n";
  CHECK_THROWS_WITH(read_scaling_run(dir.string()), Contains("has no metrics.jsonl"));
  std::ofstream(dir / "metrics.jsonl") << "{\"step\":1,\"loss\":5.0,\"tokens_seen\":100}\n";
  CHECK_THROWS_WITH(read_scaling_run(dir.string()), Contains("has no val_loss record"));
  std::ofstream(dir / "metrics.jsonl", std::ios::app) << "{\"step\":2,\"loss\":4.0,\"tokens_seen\":200}\n\n"
                                                         "{\"step\":2,\"val_loss\":4.5,\"val_ppl\":90.0}\n";
  RunScalingData run = read_scaling_run(dir.string());
  REQUIRE(run.curve.points.size() == 2);
  CHECK(run.curve.points[1].tokens == 200);
  CHECK(run.curve.points[1].loss == 4.0);
  CHECK(run.final_row.params == 108704);
  CHECK(run.final_row.tokens == 200);
  CHECK(run.final_row.loss == 4.5);
  std::ofstream(dir / "metrics.jsonl", std::ios::app) << "not json\n";
  CHECK_THROWS_WITH(read_scaling_run(dir.string()), Contains("metrics.jsonl:5: not a JSON object"));
  fs::remove_all(dir);
}

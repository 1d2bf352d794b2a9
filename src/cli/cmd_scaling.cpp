// `moe scaling optimal|loss|fit`: compute-optimal sizes for a FLOP budget, predicted losses, and
// the Chinchilla fit of observed runs (src/tools/scaling_law.h; docs/scaling_laws.md).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/tools/plan.h"
#include "src/tools/scaling_isoflop.h"
#include "src/tools/scaling_law.h"
#include "src/util/check.h"

namespace moe {

namespace {

struct ScalingOptions {
  std::string law = "chinchilla";
  std::string flops, params, tokens, tokens_per_param;  // numbers, parsed here for one-line errors
  std::string path;                                     // the fit's FILE, or optimal's CONFIG
  LossColumns columns;                                  // the fit's column names
  std::vector<std::string> inputs;                      // isoflop: run directories or loss files
  std::string tolerance = "0.1", json;                  // isoflop: budget grouping, the plot data file
  std::vector<std::string> overrides;
};

double parse_positive(const std::string& text, const char* option) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(begin, &end);
  MOE_CHECK(end != begin && *end == '\0', option, " '", text, "' is not a number");
  MOE_CHECK(errno == 0 && std::isfinite(value), option, " '", text, "' is out of range");
  MOE_CHECK(value > 0, option, " must be positive, got ", text);
  return value;
}

// The Chinchilla-form law named by --law (kaplan is a different form: only `loss` takes it).
ChinchillaLaw chinchilla_by_name(const std::string& name) {
  if (name == "chinchilla") return hoffmann_law();
  if (name == "besiroglu") return besiroglu_law();
  MOE_CHECK(name != "kaplan", "--law kaplan gives losses only (moe scaling loss); use chinchilla or besiroglu");
  MOE_FAIL("unknown law '", name, "': expected chinchilla, besiroglu or kaplan");
}

void print_law(const std::string& name, const ChinchillaLaw& law) {
  const char* source = name == "chinchilla" ? "Hoffmann et al. 2022, approach 3" : "Besiroglu et al. 2024 replication";
  std::printf("law:             %s (%s): L = %.5g + %.6g / N^%.5g + %.6g / D^%.5g\n", name.c_str(), source, law.e,
              law.a, law.alpha, law.b, law.beta);
}

void print_allocation(const ChinchillaLaw& law, const Allocation& at) {
  std::printf("compute C:       %.4g FLOPs (C = 6 N D)\n", at.flops);
  std::printf("params N:        %.4g\n", at.params);
  std::printf("tokens D:        %.4g\n", at.tokens);
  std::printf("tokens/param:    %.2f\n", at.tokens_per_param());
  std::printf("predicted loss:  %.4f\n", chinchilla_loss(law, at.params, at.tokens));
}

void print_optimum_rule(const ChinchillaLaw& law) {
  std::printf("optimum:         N_opt = G (C/6)^%.4f, D_opt = (C/6) / N_opt, G = %.5g\n",
              law.beta / (law.alpha + law.beta), optimum_coefficient(law));
}

// N of a config: every parameter a token uses (all of a dense model; an MoE model without the
// routed experts its tokens skip), and the total; Chinchilla's N counts embeddings too.
void optimal_for_config(const ScalingOptions& o, const ChinchillaLaw& law) {
  MOE_CHECK(!o.tokens.empty(), "moe scaling optimal CONFIG needs --tokens D (the run's training tokens)");
  MOE_CHECK(o.flops.empty(), "moe scaling optimal takes --flops or CONFIG --tokens, not both");
  MOE_CHECK(o.tokens_per_param.empty(), "--tokens-per-param goes with --flops, not with a CONFIG");
  Config config = load_config(o.path, o.overrides);
  ParamCounts counts = count_params(config.model, config.moe);
  double tokens = parse_positive(o.tokens, "--tokens");
  int64_t used = params_used_per_token(counts);
  double n = static_cast<double>(used);
  bool moe = counts.expert > 0;
  std::printf("config:          %s (%s)\n", o.path.c_str(), moe ? "MoE" : "dense");
  std::printf("params:          %lld total, %lld used per token (N below)\n", static_cast<long long>(counts.total),
              static_cast<long long>(used));
  if (moe) {
    std::printf("caveat:          Chinchilla laws are fitted on dense models; N here is the parameters a token "
                "uses, so the loss is a dense-equivalent estimate (MoE models of the same N usually do better)\n");
  }
  print_law(o.law, law);
  Allocation run{training_flops(n, tokens), n, tokens};
  std::printf("-- this run --\n");
  print_allocation(law, run);
  std::printf("-- compute-optimal at the same C --\n");
  print_allocation(law, compute_optimal(law, run.flops));
}

int run_optimal(const ScalingOptions& o) {
  ChinchillaLaw law = chinchilla_by_name(o.law);
  if (!o.path.empty()) {
    optimal_for_config(o, law);
    return 0;
  }
  MOE_CHECK(!o.flops.empty(), "moe scaling optimal needs --flops C (or a CONFIG and --tokens D)");
  MOE_CHECK(o.tokens.empty() && o.overrides.empty(), "--tokens and --set need a CONFIG (moe scaling optimal CONFIG --tokens D)");
  double flops = parse_positive(o.flops, "--flops");
  print_law(o.law, law);
  if (!o.tokens_per_param.empty()) {
    std::printf("rule:            fixed tokens/param (approach-1 style), loss from the law\n");
    print_allocation(law, allocate_by_ratio(flops, parse_positive(o.tokens_per_param, "--tokens-per-param")));
    return 0;
  }
  print_optimum_rule(law);
  print_allocation(law, compute_optimal(law, flops));
  return 0;
}

int run_loss(const ScalingOptions& o) {
  MOE_CHECK(!o.params.empty() && !o.tokens.empty(), "moe scaling loss needs --params N and --tokens D");
  double n = parse_positive(o.params, "--params"), d = parse_positive(o.tokens, "--tokens");
  if (o.law == "kaplan") {
    KaplanLaw k;
    std::printf("law:             kaplan (Kaplan et al. 2020), N = non-embedding parameters\n");
    std::printf("compute C:       %.4g FLOPs (C = 6 N D)\n", training_flops(n, d));
    std::printf("L(N):            %.4f  (N_c / N)^%.3f, N_c = %.3g\n", kaplan_loss_params(k, n), k.alpha_n, k.n_c);
    std::printf("L(D):            %.4f  (D_c / D)^%.3f, D_c = %.3g\n", kaplan_loss_tokens(k, d), k.alpha_d, k.d_c);
    std::printf("predicted loss:  %.4f  L(N, D) = [(N_c/N)^(a_N/a_D) + D_c/D]^a_D\n", kaplan_loss(k, n, d));
    return 0;
  }
  ChinchillaLaw law = chinchilla_by_name(o.law);
  print_law(o.law, law);
  print_allocation(law, {training_flops(n, d), n, d});
  return 0;
}

int run_fit(const ScalingOptions& o) {
  MOE_CHECK(!o.path.empty(), "moe scaling fit needs a FILE of (params, tokens, loss) rows");
  // --flops is checked before the fit (4500 L-BFGS starts) so a typo fails at once.
  double flops = o.flops.empty() ? 0.0 : parse_positive(o.flops, "--flops");
  std::vector<LossObservation> rows = read_loss_observations(o.path, o.columns);
  FitResult fit = fit_chinchilla(rows);
  if (o.flops.empty()) {
    for (const LossObservation& r : rows) flops = std::max(flops, training_flops(r.params, r.tokens));
  }
  std::printf("rows:            %zu (%s)\n", rows.size(), o.path.c_str());
  std::printf("fit:             E = %.6g, A = %.6g, B = %.6g, alpha = %.6g, beta = %.6g\n", fit.law.e, fit.law.a,
              fit.law.b, fit.law.alpha, fit.law.beta);
  std::printf("huber objective: %.4g (delta 1e-3 on log loss, best of %d L-BFGS starts)\n", fit.objective,
              fit.num_starts);
  if (!(fit.law.alpha > 0 && fit.law.beta > 0 && fit.law.a > 0 && fit.law.b > 0)) {
    std::printf("optimum:         none (the fit has alpha or beta <= 0)\n");
    return 0;
  }
  print_optimum_rule(fit.law);
  std::printf("-- compute-optimal at %s --\n", o.flops.empty() ? "the largest run's C" : "--flops");
  print_allocation(fit.law, compute_optimal(fit.law, flops));
  return 0;
}

// The runs of `moe scaling isoflop`: final rows, and curves (a run directory's training loss;
// a file's row is a one-point curve).
void read_isoflop_inputs(const ScalingOptions& o, std::vector<LossObservation>& rows, std::vector<LossCurve>& curves) {
  for (const std::string& input : o.inputs) {
    if (std::filesystem::is_directory(input)) {
      RunScalingData run = read_scaling_run(input);
      rows.push_back(run.final_row);
      curves.push_back(std::move(run.curve));
      continue;
    }
    for (const LossObservation& row : read_loss_observations(input, o.columns)) {
      rows.push_back(row);
      curves.push_back({input, {row}});
    }
  }
}

nlohmann::json power_law_json(const PowerLaw& law, nlohmann::json points) {
  return {{"coefficient", law.coefficient}, {"exponent", law.exponent}, {"points", std::move(points)}};
}

void print_power_law(const char* name, const PowerLaw& n_opt, const PowerLaw& d_opt) {
  std::printf("%s N_opt = %.5g C^%.4f, D_opt = %.5g C^%.4f\n", name, n_opt.coefficient, n_opt.exponent,
              d_opt.coefficient, d_opt.exponent);
}

// Approach 2, with its budgets printed; the JSON's budgets and approach2.
void report_isoflop(const IsoflopFit& fit, nlohmann::json& out) {
  nlohmann::json budgets = nlohmann::json::array(), optima = nlohmann::json::array();
  for (const IsoflopBudget& b : fit.budgets) {
    nlohmann::json runs = nlohmann::json::array();
    for (const LossObservation& r : b.runs) runs.push_back({{"params", r.params}, {"tokens", r.tokens}, {"loss", r.loss}});
    nlohmann::json budget = {{"flops", b.flops}, {"runs", runs}, {"parabola", nullptr}};
    if (b.has_optimum) {
      budget["parabola"] = {b.a, b.b, b.c};
      budget["params_opt"] = b.params_opt;
      budget["loss_opt"] = b.loss_opt;
      optima.push_back({{"flops", b.flops}, {"params", b.params_opt}});
      std::printf("budget:          C = %.4g, %zu runs, N_opt = %.4g, D_opt = %.4g, loss %.4f\n", b.flops, b.runs.size(),
                  b.params_opt, b.flops / (6 * b.params_opt), b.loss_opt);
    } else {
      std::printf("budget:          C = %.4g, %zu runs, no optimum (%s)\n", b.flops, b.runs.size(),
                  b.runs.size() < 3 ? "fewer than 3 model sizes" : "the parabola opens downward");
    }
    budgets.push_back(std::move(budget));
  }
  out["budgets"] = std::move(budgets);
  out["approach2"] = nullptr;
  if (fit.num_optima < 2) {
    std::printf("approach 2:      no power law (%d budget(s) with an optimum; it needs 2)\n", fit.num_optima);
    return;
  }
  print_power_law("approach 2:     ", fit.params_opt, fit.tokens_opt);
  out["approach2"] = power_law_json(fit.params_opt, std::move(optima));
}

void report_envelope(const EnvelopeFit& fit, nlohmann::json& out) {
  out["approach1"] = nullptr;
  if (fit.num_sizes < 2) {
    std::printf("approach 1:      no power law (the envelope has %d model size(s); it needs 2)\n", fit.num_sizes);
    return;
  }
  nlohmann::json points = nlohmann::json::array();
  for (const EnvelopePoint& p : fit.points) {
    points.push_back({{"flops", p.flops}, {"params", p.params}, {"loss", p.loss}, {"run", p.run}});
  }
  print_power_law("approach 1:     ", fit.params_opt, fit.tokens_opt);
  out["approach1"] = power_law_json(fit.params_opt, std::move(points));
}

int run_isoflop(const ScalingOptions& o) {
  MOE_CHECK(!o.inputs.empty(), "moe scaling isoflop needs run directories or files of (params, tokens, loss) rows");
  double tolerance = parse_positive(o.tolerance, "--tolerance");
  std::vector<LossObservation> rows;
  std::vector<LossCurve> curves;
  read_isoflop_inputs(o, rows, curves);
  std::printf("runs:            %zu\n", rows.size());
  nlohmann::json out;
  report_isoflop(fit_isoflop(rows, tolerance), out);
  report_envelope(fit_envelope(curves, 40, tolerance), out);
  std::set<double> ns, ds;
  for (const LossObservation& r : rows) ns.insert(r.params), ds.insert(r.tokens);
  out["approach3"] = nullptr;
  if (rows.size() < 5 || ns.size() < 2 || ds.size() < 2) {
    std::printf("approach 3:      no fit (it needs 5 runs, 2 distinct N and 2 distinct D)\n");
  } else {
    FitResult fit = fit_chinchilla(rows);
    const ChinchillaLaw& law = fit.law;
    std::printf("approach 3:      E = %.6g, A = %.6g, B = %.6g, alpha = %.6g, beta = %.6g (huber %.3g)\n", law.e,
                law.a, law.b, law.alpha, law.beta, fit.objective);
    if (law.alpha > 0 && law.beta > 0) print_optimum_rule(law);
    out["approach3"] = {{"e", law.e}, {"a", law.a}, {"b", law.b}, {"alpha", law.alpha}, {"beta", law.beta}};
  }
  if (!o.json.empty()) {
    std::ofstream file(o.json);
    MOE_CHECK(file.good(), "--json: cannot write ", o.json);
    file << out.dump(1) << "\n";
    std::printf("json:            %s (experiments/report.py --scaling plots it)\n", o.json.c_str());
  }
  return 0;
}

CLI::App* add_law_option(CLI::App* cmd, ScalingOptions& o) {
  cmd->add_option("--law", o.law, "chinchilla (default), besiroglu, or kaplan (loss only)");
  return cmd;
}

}  // namespace

void add_scaling_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("scaling", "scaling laws: compute-optimal N and D, predicted loss, fits");
  cmd->require_subcommand(1);
  auto o = std::make_shared<ScalingOptions>();
  auto* optimal = add_law_option(cmd->add_subcommand("optimal", "compute-optimal params and tokens for a FLOP budget"), *o);
  optimal->add_option("config", o->path, "TOML config: N from the model, with --tokens D");
  optimal->add_option("--flops", o->flops, "training compute C in FLOPs");
  optimal->add_option("--tokens", o->tokens, "training tokens D (with CONFIG)");
  optimal->add_option("--tokens-per-param", o->tokens_per_param, "fixed D/N ratio instead of the law's optimum");
  optimal->add_option("--set", o->overrides, "override a config key: section.key=value (repeatable)");
  auto* loss = add_law_option(cmd->add_subcommand("loss", "predicted loss for N parameters and D tokens"), *o);
  loss->add_option("--params", o->params, "parameters N");
  loss->add_option("--tokens", o->tokens, "training tokens D");
  auto* fit = cmd->add_subcommand("fit", "fit E, A, B, alpha, beta to (params, tokens, loss) rows");
  fit->add_option("file", o->path, "JSON lines or CSV with params, tokens, loss");
  fit->add_option("--flops", o->flops, "budget for the allocation (default: the largest run's 6 N D)");
  fit->add_option("--params-column", o->columns.params, "name of N's field or column");
  fit->add_option("--tokens-column", o->columns.tokens, "name of D's field or column");
  fit->add_option("--loss-column", o->columns.loss, "name of the loss's field or column");
  auto* isoflop = cmd->add_subcommand("isoflop", "Chinchilla approaches 1, 2 and 3 on the same runs");
  isoflop->add_option("inputs", o->inputs, "run directories (config.toml, metrics.jsonl) or loss files")->required();
  isoflop->add_option("--tolerance", o->tolerance, "runs within C (1 + tolerance) of a budget's smallest share it");
  isoflop->add_option("--json", o->json, "write the fits and their points here (for experiments/report.py)");
  isoflop->add_option("--params-column", o->columns.params, "name of N's field or column");
  isoflop->add_option("--tokens-column", o->columns.tokens, "name of D's field or column");
  isoflop->add_option("--loss-column", o->columns.loss, "name of the loss's field or column");
  // Pure arithmetic on one process: under mpirun rank 0 prints and the others do nothing.
  auto on_rank0 = [&run](std::function<int(const ScalingOptions&)> body, std::shared_ptr<ScalingOptions> o) {
    return [&run, body, o] {
      run = [body, o](MpiEnv& env) { return env.world_rank() == 0 ? body(*o) : 0; };
    };
  };
  optimal->callback(on_rank0(run_optimal, o));
  loss->callback(on_rank0(run_loss, o));
  fit->callback(on_rank0(run_fit, o));
  isoflop->callback(on_rank0(run_isoflop, o));
}

}  // namespace moe

// `moe plan CONFIG [--world N] [--set k=v] [--device cpu|cuda]`: per-rank memory and FLOPs per
// token of a config on N ranks, without running it; `moe plan --zero-table` prints the ZeRO
// paper's model-state table as computed. Runs on one process (rank 0 prints under mpirun).
#include <cstdio>
#include <memory>

#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/tools/plan.h"
#include "src/util/check.h"

namespace moe {

namespace {

struct PlanOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  int world = 1;
  std::string device;
  bool zero_table = false;
};

}  // namespace

void add_plan_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("plan", "per-rank memory and FLOPs of a config on N ranks (no run)");
  auto options = std::make_shared<PlanOptions>();
  cmd->add_option("config", options->config_path, "TOML config file");
  cmd->add_option("--set", options->overrides, "override a key: section.key=value (repeatable)");
  cmd->add_option("--world", options->world, "number of ranks to plan for");
  cmd->add_option("--device", options->device, "plan for cpu or cuda (default: train.device; auto plans cuda)");
  cmd->add_flag("--zero-table", options->zero_table, "print the ZeRO paper's model-state table (7.5B, 128B, 1T)");
  cmd->callback([&run, options] {
    run = [options](MpiEnv& env) {
      const PlanOptions& o = *options;
      std::string text;
      if (o.zero_table) {
        MOE_CHECK(o.config_path.empty() && o.overrides.empty(), "moe plan --zero-table takes no config");
        text = format_zero_table();
      } else {
        MOE_CHECK(!o.config_path.empty(), "moe plan needs a CONFIG file (or --zero-table)");
        MOE_CHECK(o.world >= 1, "--world ", o.world, " must be at least 1");
        Config config = load_config(o.config_path, o.overrides);
        text = format_plan(make_plan(config, o.world, o.device), config);
      }
      if (env.world_rank() == 0) std::printf("%s", text.c_str());
      return 0;
    };
  });
}

}  // namespace moe

// `moe bench train CONFIG [--warmup N] [--steps N]`: tokens/s, MFU and peak memory over timed
// steps after warm-up, printed by rank 0 as one JSON line. Without data.train_path the batches
// are random tokens (speed does not depend on the values).
#include <cstdio>

#include "src/cli/commands.h"
#include "src/cli/run_setup.h"

namespace moe {

void add_bench_command(CLI::App& app, CommandRunner& run) {
  auto* bench = app.add_subcommand("bench", "measure speed and memory");
  bench->require_subcommand(1);
  auto* cmd = bench->add_subcommand("train", "time training steps of a config");
  auto options = std::make_shared<RunOptions>();
  auto warmup = std::make_shared<int64_t>(3);
  auto steps = std::make_shared<int64_t>(10);
  add_run_options(*cmd, *options);
  cmd->add_option("--warmup", *warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--steps", *steps, "timed steps")->check(CLI::PositiveNumber);
  cmd->callback([&run, options, warmup, steps] {
    run = [options, warmup, steps](MpiEnv& env) {
      RunContext ctx = setup_run(*options, env, false);
      nlohmann::json result = ctx.trainer->bench(*warmup, *steps);
      result["config"] = options->config_path;
      if (ctx.world->rank() == 0) std::printf("%s\n", result.dump().c_str());
      return 0;
    };
  });
}

}  // namespace moe

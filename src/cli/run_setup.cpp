// Shared set-up of train / bench / eval: config, communicator on the run's device, trainer.
#include "src/cli/run_setup.h"

#include "src/train/device_select.h"

namespace moe {

void add_run_options(CLI::App& cmd, RunOptions& options) {
  cmd.add_option("config", options.config_path, "TOML config file")->required();
  cmd.add_option("--set", options.overrides, "override a key: section.key=value (repeatable)");
}

RunContext setup_run(const RunOptions& options, MpiEnv& env) {
  RunContext ctx;
  ctx.config = load_config(options.config_path, options.overrides);
  Device device = select_device(ctx.config.train, env.local_rank());
  ctx.world = make_world_communicator(device);
  ctx.trainer = std::make_unique<Trainer>(ctx.config, env.local_rank(), *ctx.world);
  return ctx;
}

}  // namespace moe

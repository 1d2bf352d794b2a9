// `moe train CONFIG [--set section.key=value ...]`: the training run.
#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/train/trainer.h"

namespace moe {

void add_train_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("train", "train a model from a TOML config");
  auto options = std::make_shared<RunOptions>();
  add_run_options(*cmd, *options);
  cmd->callback([&run, options] {
    run = [options](MpiEnv& env) {
      RunContext ctx = setup_run(*options, env);
      ctx.trainer->train();
      return 0;
    };
  });
}

}  // namespace moe

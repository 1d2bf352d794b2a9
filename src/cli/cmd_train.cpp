// `moe train CONFIG [--set section.key=value ...]`: the training run. SIGTERM, SIGINT or SIGHUP
// end it after the current step with a checkpoint and exit code 128 + signal.
#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/train/trainer.h"
#include "src/util/stop_signal.h"

namespace moe {

void add_train_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("train", "train a model from a TOML config");
  auto options = std::make_shared<RunOptions>();
  add_run_options(*cmd, *options);
  cmd->callback([&run, options] {
    run = [options](MpiEnv& env) {
      install_stop_signal_handlers();  // before the set-up: a signal during it stops after step 1
      RunContext ctx = setup_run(*options, env);
      const int signal = ctx.trainer->train();
      return signal != 0 ? stop_exit_code(signal) : 0;
    };
  });
}

}  // namespace moe

// `moe eval CONFIG [--checkpoint DIR|latest]`: validation loss and perplexity as one JSON line.
#include <cmath>
#include <cstdio>

#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/train/checkpoint.h"

namespace moe {

void add_eval_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("eval", "evaluate a checkpoint on the validation split");
  auto options = std::make_shared<RunOptions>();
  auto checkpoint = std::make_shared<std::string>("latest");
  auto batches = std::make_shared<int64_t>(0);
  add_run_options(*cmd, *options);
  cmd->add_option("--checkpoint", *checkpoint, "checkpoint directory, or 'latest' in train.run_dir");
  cmd->add_option("--batches", *batches, "batches per rank (0 = the whole validation split)");
  cmd->callback([&run, options, checkpoint, batches] {
    run = [options, checkpoint, batches](MpiEnv& env) {
      MOE_CHECK(*batches >= 0, "--batches must be 0 (the whole validation split) or a positive number of batches "
                "per rank, got ", *batches);
      RunContext ctx = setup_run(*options, env);
      ctx.trainer->load_checkpoint(resolve_checkpoint(ctx.config.train.run_dir, *checkpoint), false);
      EvalResult r = ctx.trainer->evaluate(*batches);
      nlohmann::json out = {{"val_loss", r.loss}, {"val_ppl", std::exp(r.loss)}, {"val_tokens", r.tokens}};
      if (ctx.world->rank() == 0) std::printf("%s\n", out.dump().c_str());
      return 0;
    };
  });
}

}  // namespace moe

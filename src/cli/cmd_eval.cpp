// `moe eval [CONFIG] [--checkpoint DIR|RUN_DIR|latest]`: validation loss and perplexity as one JSON
// line on stdout (human text goes to stderr). Without CONFIG the checkpoint's own config.toml is used.
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/train/checkpoint.h"
#include "src/util/log.h"

namespace moe {

namespace {

struct EvalOptions {
  RunOptions run;
  std::string checkpoint = "latest", run_dir = TrainConfig{}.run_dir;
  int64_t batches = 0;
};

int run_eval(const EvalOptions& o, MpiEnv& env) {
  MOE_CHECK(o.batches >= 0, "--batches must be 0 (the whole validation split) or a positive number of batches "
            "per rank, got ", o.batches);
  nlohmann::json out;
  int rank = 0;
  {
    StdoutToStderr human_text_to_stderr;  // stdout carries the JSON alone: `moe eval ... | jq`
    Config config;
    std::string dir;
    if (!o.run.config_path.empty()) {
      config = load_config(o.run.config_path, o.run.overrides);
      dir = resolve_checkpoint_arg("--checkpoint", o.checkpoint, config.train.run_dir);
    } else {
      dir = resolve_checkpoint_arg("--checkpoint", o.checkpoint, o.run_dir);
      MOE_CHECK(std::filesystem::is_regular_file(dir + "/config.toml"), "moe eval without CONFIG reads the "
                "checkpoint's config, but ", dir, "/config.toml does not exist");
      config = load_config(dir + "/config.toml", o.run.overrides);
    }
    RunContext ctx = setup_run(std::move(config), env);
    ctx.trainer->load_checkpoint(dir, false);
    EvalResult r = ctx.trainer->evaluate(o.batches);
    out = {{"val_loss", r.loss}, {"val_ppl", std::exp(r.loss)}, {"val_tokens", r.tokens}, {"checkpoint", dir}};
    if (r.accuracy >= 0) out["val_accuracy"] = r.accuracy;
    rank = ctx.world->rank();
  }
  if (rank == 0) std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("eval", "evaluate a checkpoint on the validation split");
  auto o = std::make_shared<EvalOptions>();
  add_run_options(*cmd, o->run, false);
  cmd->add_option("--checkpoint", o->checkpoint,
                  "checkpoint directory, a run directory (its newest checkpoint), or 'latest' in the run directory");
  cmd->add_option("--run-dir", o->run_dir, "where 'latest' looks without CONFIG (with CONFIG: its train.run_dir)");
  cmd->add_option("--batches", o->batches, "batches per rank (0 = the whole validation split)");
  cmd->callback([&run, o] {
    log::human_to_stderr();  // at parse time, before any line: stdout carries the JSON alone
    run = [o](MpiEnv& env) { return run_eval(*o, env); };
  });
}

}  // namespace moe

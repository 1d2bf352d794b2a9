// The `moe` executable: parses the subcommand, runs it on every rank, and turns any error
// into one line and a non-zero exit of the whole job (never a hang on the other ranks).
#include <cstdio>

#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/util/check.h"

namespace {

// `moe frobnicate`: CLI11 alone answers "A subcommand is required"; name the word and the commands.
void check_command_name(CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return;
  std::string word = argv[1];
  std::string names;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->check_name(word)) return;
    names += (names.empty() ? "" : ", ") + sub->get_name();
  }
  MOE_FAIL("unknown command '", word, "' (commands: ", names, ")");
}

}  // namespace

int main(int argc, char** argv) {
  moe::MpiEnv env(&argc, &argv);
  CLI::App app{"moe-engine: Mixture-of-Experts pretraining"};
  app.require_subcommand(1);
  moe::CommandRunner run;
  moe::add_train_command(app, run);
  moe::add_bench_command(app, run);
  moe::add_eval_command(app, run);
  moe::add_generate_command(app, run);
  moe::add_tokenize_command(app, run);
  moe::add_hash_table_command(app, run);
  moe::add_upcycle_command(app, run);
  moe::add_convert_command(app, run);
  moe::add_logits_command(app, run);
  moe::add_plan_command(app, run);
  moe::add_scaling_command(app, run);
  moe::run_or_abort([&] {
    check_command_name(app, argc, argv);
    return 0;
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    if (env.world_size() > 1 && code != 0) moe::abort_job("bad command line");
    return code;
  }
  return moe::run_or_abort([&] { return run(env); });
}

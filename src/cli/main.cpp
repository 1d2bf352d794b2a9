// The `moe` executable: parses the subcommand, runs it on every rank, and turns any error
// into one line and a non-zero exit of the whole job (never a hang on the other ranks).
// Exit codes (docs/cli.md): 0 success, 1 runtime error, 2 usage error, 128 + signal when stopped.
#include <cstdio>
#include <string>

#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/util/log.h"

namespace {

constexpr int usage_exit_code = 2;  // a bad command line (unknown flag, missing argument, bad value)

// `moe frobnicate`: CLI11 alone answers "A subcommand is required"; name the word and the commands.
// Returns the error message, or "" when the word names a command.
std::string check_command_name(CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return "";
  std::string word = argv[1];
  std::string names;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->check_name(word)) return "";
    names += (names.empty() ? "" : ", ") + sub->get_name();
  }
  return "unknown command '" + word + "' (commands: " + names + ")";
}

// --help shows each option's default, except where none is meaningful: a required option, or an
// empty list (repeatable options such as --set).
void tidy_help_defaults(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    if (option->get_required() || option->get_default_str() == "[]") option->default_str("");
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) tidy_help_defaults(*sub);
}

// -q/--quiet and -v/--verbose on every command and subcommand (docs/cli.md, "Logging").
void add_log_flags(CLI::App& app, bool& quiet, bool& verbose) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    CLI::Option* q = sub->add_flag("-q,--quiet", quiet, "warnings and errors only");
    CLI::Option* v = sub->add_flag("-v,--verbose", verbose, "debug lines too (from every rank under mpirun)");
    q->excludes(v);
    add_log_flags(*sub, quiet, verbose);
  }
}

}  // namespace

int main(int argc, char** argv) {
  moe::MpiEnv env(&argc, &argv);
  CLI::App app{"moe-engine: Mixture-of-Experts pretraining", "moe"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("moe-engine ") + MOE_VERSION);
  // Every option's default shows in --help (subcommands inherit these defaults when added).
  app.option_defaults()->always_capture_default();
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
  bool quiet = false, verbose = false;
  add_log_flags(app, quiet, verbose);
  tidy_help_defaults(app);
  if (std::string message = check_command_name(app, argc, argv); !message.empty()) {
    if (env.world_size() > 1) moe::abort_job(message);
    moe::log::error("{}", message);
    return usage_exit_code;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version end here with code 0; CLI11's own codes (105-114) become 2.
    const int code = app.exit(e) == 0 ? 0 : usage_exit_code;
    if (env.world_size() > 1 && code != 0) moe::abort_job("bad command line");
    return code;
  }
  moe::log::configure(quiet ? moe::log::Level::warn : verbose ? moe::log::Level::debug : moe::log::Level::info,
                      env.world_rank(), env.world_size());
  moe::log::debug("moe-engine {}: {} rank(s), this is rank {} (local rank {})", MOE_VERSION, env.world_size(),
                  env.world_rank(), env.local_rank());
  return moe::run_or_abort([&] { return run(env); });
}

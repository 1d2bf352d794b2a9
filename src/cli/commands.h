// The `moe` subcommands: each file registers one on the CLI11 app and runs it.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace moe {

class MpiEnv;

// A registered command: the callback runs after parsing, inside the job's error handling.
using CommandRunner = std::function<int(MpiEnv&)>;

void add_train_command(CLI::App& app, CommandRunner& run);
void add_bench_command(CLI::App& app, CommandRunner& run);
void add_eval_command(CLI::App& app, CommandRunner& run);
void add_generate_command(CLI::App& app, CommandRunner& run);
void add_tokenize_command(CLI::App& app, CommandRunner& run);
void add_hash_table_command(CLI::App& app, CommandRunner& run);
void add_upcycle_command(CLI::App& app, CommandRunner& run);
void add_convert_command(CLI::App& app, CommandRunner& run);
void add_logits_command(CLI::App& app, CommandRunner& run);
void add_plan_command(CLI::App& app, CommandRunner& run);
void add_scaling_command(CLI::App& app, CommandRunner& run);

}  // namespace moe

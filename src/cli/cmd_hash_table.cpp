// `moe hash-table --kind balanced|random|clustering|dispersed --experts E --out FILE ...`:
// builds a hash-routing table for moe.hash_table (src/tools/hash_table_command.h does the work).
#include <memory>

#include "parallel/mpi_env.h"
#include "src/tools/hash_table_command.h"
#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/util/log.h"

namespace moe {

void add_hash_table_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("hash-table", "build a hash-routing table (Hash Layers) for moe.hash_table");
  auto o = std::make_shared<HashTableCommandOptions>();
  cmd->add_option("--kind", o->kind, "balanced | random | clustering | dispersed")
      ->required()
      ->check(CLI::IsMember({"balanced", "random", "clustering", "dispersed"}));
  cmd->add_option("--experts", o->experts, "experts per MoE layer")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--out", o->out, "table file to write (safetensors)")->required();
  cmd->add_option("--data", o->data, "token shard: token frequencies (balanced; a load report for the others)");
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint directory (or its run directory) whose embed.tokens is clustered");
  cmd->add_option("--vocab-size", o->vocab_size, "model.vocab_size (balanced, random)")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->seed, "random table / k-means initialisation seed");
  cmd->add_option("--iterations", o->iterations, "k-means rounds (at most)")->check(CLI::NonNegativeNumber);
  cmd->callback([&run, o] {
    run = [o](MpiEnv& env) {
      if (!o->checkpoint.empty()) o->checkpoint = resolve_checkpoint_arg("--checkpoint", o->checkpoint, "");
      log::LineStream lines(log::Level::info);
      if (env.world_rank() == 0) run_hash_table_command(*o, lines);  // one writer under mpirun
      return 0;
    };
  });
}

}  // namespace moe

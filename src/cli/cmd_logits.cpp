// `moe logits RUN_OR_CHECKPOINT --tokens 1,2,3 [--out FILE] [--f64]`: one sequence's logits as
// JSON (src/tools/logits_dump.h), for comparisons with other implementations.
#include <cstdio>
#include <memory>

#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/io/atomic_dir.h"
#include "src/tools/logits_dump.h"

namespace moe {

void add_logits_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("logits", "print one token sequence's logits under a checkpoint (JSON)");
  auto from = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto tokens = std::make_shared<std::vector<int32_t>>();
  auto f64 = std::make_shared<bool>(false);
  cmd->add_option("checkpoint", *from, "run directory (its latest checkpoint) or checkpoint directory")->required();
  cmd->add_option("--tokens", *tokens, "token ids, comma separated")->required()->delimiter(',');
  cmd->add_option("--out", *out, "write the JSON here instead of stdout");
  cmd->add_flag("--f64", *f64, "compute in f64 (default f32)");
  cmd->callback([&run, from, out, tokens, f64] {
    run = [from, out, tokens, f64](MpiEnv& env) {
      if (env.world_rank() != 0) return 0;
      const std::string text = checkpoint_logits(*from, *tokens, *f64).dump() + "\n";
      if (out->empty()) {
        std::fputs(text.c_str(), stdout);
      } else {
        write_file_atomically(*out, text);
      }
      return 0;
    };
  });
}

}  // namespace moe

// `moe upcycle MOE.toml --from DENSE_CHECKPOINT | --from-hf HF_DIR --out DIR [--mode ...] [--set k=v]`:
// turns a dense checkpoint (or Hugging Face model) into a step-0 MoE checkpoint that `moe train`
// resumes (src/tools/upcycle.h).
#include <memory>

#include "src/tools/hf_import.h"
#include "src/tools/upcycle.h"
#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/util/log.h"

namespace moe {

namespace {

struct UpcycleCommandOptions {
  std::string from, from_hf, config_path, out, mode = "copy";
  std::vector<std::string> overrides;
  double reinit_fraction = 0.5;
  uint64_t seed = 0;
};

// One shell word: left bare when it holds only safe characters, else in single quotes.
std::string shell_quote(const std::string& word) {
  const bool safe = !word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                            "0123456789_./=:,+-@%") == std::string::npos;
  if (safe) return word;
  std::string quoted = "'";
  for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// The `moe train` command that resumes the upcycled checkpoint: the same config and --set overrides.
std::string resume_command(const UpcycleCommandOptions& o) {
  std::string command = "moe train " + shell_quote(o.config_path);
  for (const std::string& kv : o.overrides) command += " --set " + shell_quote(kv);
  return command + " --set " + shell_quote("train.resume=" + o.out);
}

void print_result(const UpcycleCommandOptions& c, const std::string& from, const UpcycleOptions& o,
                  const UpcycleResult& r) {
  const std::string& out = c.out;
  log::info("upcycle: {} -> {} (mode {}, seed {}): {} parameters copied, {} MoE layers built", from, out,
            upcycle_mode_name(o.mode), o.seed, r.copied.size(), r.layers.size());
  for (const UpcycledLayer& l : r.layers) {
    std::string line = fmt::format("  layer {}: {} experts of width {} from d_ff {}", l.layer, l.num_experts,
                                   l.d_expert, l.d_dense);
    if (o.mode == UpcycleMode::fine_grained) {
      line += fmt::format(", G = {} segments, R = {} virtual groups, s = {:g}", l.groups, l.replicas, l.scale);
    } else if (o.mode == UpcycleMode::partial_reinit) {
      line += fmt::format(", {} of {} expert entries re-initialised", l.reinit_entries, l.expert_entries);
    }
    log::info("{}", line);
  }
  for (const std::string& w : r.warnings) log::warn("{}", w);
  log::info("resume with: {}", resume_command(c));
}

}  // namespace

void add_upcycle_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("upcycle", "build an MoE checkpoint from a dense one (sparse upcycling)");
  auto o = std::make_shared<UpcycleCommandOptions>();
  // CONFIG is positional like every command's; --config stays accepted for older scripts.
  cmd->add_option("config,--config", o->config_path, "TOML config of the MoE model to build")->required();
  auto* from = cmd->add_option("--from", o->from, "dense checkpoint directory (checkpoints/step_<N>) or its run directory");
  auto* from_hf = cmd->add_option("--from-hf", o->from_hf, "dense Hugging Face directory (llama, mistral, qwen2)");
  from->excludes(from_hf);
  from_hf->excludes(from);
  cmd->add_option("--out", o->out, "MoE checkpoint directory to write")->required();
  cmd->add_option("--mode", o->mode, "copy | fine_grained | partial_reinit")
      ->check(CLI::IsMember({"copy", "fine_grained", "partial_reinit"}));
  auto* fraction = cmd->add_option("--reinit-fraction", o->reinit_fraction,
                                   "partial_reinit: share of each expert matrix re-initialised")
                       ->check(CLI::Range(0.0, 1.0));
  auto* seed = cmd->add_option("--seed", o->seed, "initialisation and shuffle seed")->default_str("train.seed");
  cmd->add_option("--set", o->overrides, "override a key of the MoE config: section.key=value (repeatable)");
  cmd->callback([&run, o, fraction, seed] {
    const bool fraction_given = fraction->count() > 0, seed_given = seed->count() > 0;
    run = [o, fraction_given, seed_given](MpiEnv& env) {
      UpcycleOptions options;
      options.mode = upcycle_mode_from_name(o->mode);
      MOE_CHECK(!fraction_given || options.mode == UpcycleMode::partial_reinit,
                "--reinit-fraction applies to --mode partial_reinit only");
      options.reinit_fraction = o->reinit_fraction;
      if (env.world_rank() != 0) return 0;  // one writer under mpirun
      Config target = load_config(o->config_path, o->overrides);
      options.seed = seed_given ? o->seed : target.train.seed;
      MOE_CHECK(!o->from.empty() || !o->from_hf.empty(), "upcycle needs --from CHECKPOINT or --from-hf DIR");
      const std::string from = o->from.empty() ? o->from_hf : resolve_checkpoint_arg("--from", o->from, "");
      UpcycleResult result = o->from.empty() ? upcycle_from_hf(o->from_hf, target, o->out, options)
                                             : upcycle_checkpoint(from, target, o->out, options);
      print_result(*o, from, options, result);
      return 0;
    };
  });
}

}  // namespace moe

// `moe eval [CONFIG] [--checkpoint DIR|RUN_DIR|latest]`: validation loss and perplexity as one JSON
// line on stdout (human text goes to stderr), or with --text/--tokens FILE each token's loss (JSONL).
// Without CONFIG the checkpoint's own config.toml is used.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/data/tokenizer.h"
#include "src/io/atomic_dir.h"
#include "src/tools/logits_dump.h"
#include "src/tools/score_text.h"
#include "src/train/checkpoint.h"
#include "src/util/log.h"

namespace moe {

namespace {

struct EvalOptions {
  RunOptions run;
  std::string checkpoint = "latest", run_dir = TrainConfig{}.run_dir;
  int64_t batches = 0;
  std::string text_file, tokens_file, tokenizer, dump_file;  // scoring a text (run_score)
  int64_t dump_layer = -1;
};

// CONFIG, else the checkpoint's own config.toml; dir <- the resolved checkpoint directory.
Config load_eval_config(const EvalOptions& o, std::string& dir) {
  if (!o.run.config_path.empty()) {
    Config config = load_config(o.run.config_path, o.run.overrides);
    dir = resolve_checkpoint_arg("--checkpoint", o.checkpoint, config.train.run_dir);
    return config;
  }
  dir = resolve_checkpoint_arg("--checkpoint", o.checkpoint, o.run_dir);
  MOE_CHECK(std::filesystem::is_regular_file(dir + "/config.toml"), "moe eval without CONFIG reads the "
            "checkpoint's config, but ", dir, "/config.toml does not exist");
  return load_config(dir + "/config.toml", o.run.overrides);
}

std::string read_whole_file(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), flag, ": cannot read ", path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// --text / --tokens FILE -> token ids (--text through --tokenizer or the config's data.tokenizer).
std::vector<int32_t> read_scored_tokens(const EvalOptions& o, const Config& config) {
  if (!o.tokens_file.empty()) return parse_token_ids(read_whole_file("--tokens", o.tokens_file), o.tokens_file);
  const std::string path = o.tokenizer.empty() ? config.data.tokenizer : o.tokenizer;
  MOE_CHECK(!path.empty(), "--text needs a tokenizer: set data.tokenizer in the config or pass --tokenizer");
  return data::Tokenizer::load(path).encode(read_whole_file("--text", o.text_file));
}

// `moe eval --text/--tokens FILE`: one {"pos","token","loss"} line per scored token, then
// {"tokens","mean_loss","ppl"}; --dump-layer L writes layer L's first-window hidden states.
int run_score(const EvalOptions& o, MpiEnv& env) {
  if (env.world_rank() != 0) return 0;
  std::string dir;
  const Config config = load_eval_config(o, dir);
  const std::vector<int32_t> tokens = read_scored_tokens(o, config);
  const std::string source = o.text_file.empty() ? o.tokens_file : o.text_file;
  MOE_CHECK(tokens.size() >= 2, source, " has ", tokens.size(), " token(s): scoring needs at least 2 (every token "
            "but the first is predicted)");
  const std::unique_ptr<Model> model = load_cpu_model(dir, config, false);
  const std::vector<TokenLoss> losses = score_tokens(*model, tokens);
  if (o.dump_layer >= 0) {
    const nlohmann::json dump = {{"layer", o.dump_layer}, {"checkpoint", dir},
                                 {"tokens", std::vector<int32_t>(tokens.begin(), tokens.begin() +
                                     std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(tokens.size()), config.model.seq_len))},
                                 {"hidden", first_window_layer_output(*model, tokens, o.dump_layer)}};
    write_file_atomically(o.dump_file, dump.dump() + "\n");
  }
  double sum = 0;
  for (const TokenLoss& l : losses) {
    sum += l.loss;
    std::printf("%s\n", nlohmann::json{{"pos", l.pos}, {"token", l.token}, {"loss", l.loss}}.dump().c_str());
  }
  const double mean = sum / static_cast<double>(losses.size());
  std::printf("%s\n", nlohmann::json{{"tokens", losses.size()}, {"mean_loss", mean}, {"ppl", std::exp(mean)}}.dump().c_str());
  log::info("scored {} tokens of {} under {}: mean loss {:.4f}", losses.size(), source, dir, mean);
  return 0;
}

int run_eval(const EvalOptions& o, MpiEnv& env) {
  MOE_CHECK(o.batches >= 0, "--batches must be 0 (the whole validation split) or a positive number of batches "
            "per rank, got ", o.batches);
  nlohmann::json out;
  int rank = 0;
  {
    StdoutToStderr human_text_to_stderr;  // stdout carries the JSON alone: `moe eval ... | jq`
    std::string dir;
    Config config = load_eval_config(o, dir);
    RunContext ctx = setup_run(std::move(config), env);
    ctx.trainer->load_checkpoint(dir, false);
    EvalResult r = ctx.trainer->evaluate(o.batches);
    out = {{"val_loss", r.loss}, {"val_ppl", std::exp(r.loss)}, {"val_tokens", r.tokens}, {"checkpoint", dir}};
    if (r.accuracy >= 0) out["val_accuracy"] = r.accuracy;
    if (r.nsp_accuracy >= 0) {
      out["val_nsp_loss"] = r.nsp_loss;
      out["val_nsp_accuracy"] = r.nsp_accuracy;
    }
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
  auto* text = cmd->add_option("--text", o->text_file, "score this text file token by token (JSONL on stdout)");
  auto* tokens = cmd->add_option("--tokens", o->tokens_file, "score these token ids (whitespace/comma separated)");
  text->excludes(tokens);
  cmd->add_option("--tokenizer", o->tokenizer, "SentencePiece model for --text (default: data.tokenizer)")->needs(text);
  auto* layer = cmd->add_option("--dump-layer", o->dump_layer, "with --text/--tokens: write this layer's output "
                                "hidden states of the first window to --dump-file (JSON)")->check(CLI::NonNegativeNumber);
  auto* dump = cmd->add_option("--dump-file", o->dump_file, "where --dump-layer writes (JSON)");
  layer->needs(dump);
  dump->needs(layer);
  cmd->callback([&run, o, text, tokens, layer] {
    log::human_to_stderr();  // at parse time, before any line: stdout carries the JSON alone
    if (!text->empty() || !tokens->empty()) {
      run = [o](MpiEnv& env) { return run_score(*o, env); };
      return;
    }
    if (!layer->empty()) throw CLI::ValidationError("--dump-layer", "needs --text or --tokens");
    run = [o](MpiEnv& env) { return run_eval(*o, env); };
  });
}

}  // namespace moe

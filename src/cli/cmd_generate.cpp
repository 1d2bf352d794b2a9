// `moe generate --checkpoint DIR|RUN_DIR|latest [--prompt TEXT]`: continues a prompt with a trained
// model (greedy with --temperature 0, else temperature, top-k and top-p sampling).
#include <cstdio>
#include <filesystem>
#include <random>

#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/data/tokenizer.h"
#include "src/model/model.h"
#include "src/model/sampling.h"
#include "src/ops/ops.h"
#include "src/train/checkpoint.h"
#include "src/train/device_select.h"

namespace moe {

namespace {

struct GenerateOptions {
  std::string checkpoint, run_dir = TrainConfig{}.run_dir, prompt = "The", tokenizer, device = "auto";
  int64_t max_new_tokens = 64;
  SamplingOptions sampling{0.8, 0.95, 0};
  uint64_t seed = 1;
  bool verify = true;  // the checkpoint's checksums
};

int run_generate(const GenerateOptions& o) {
  MOE_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda", "--device '", o.device,
            "' is not a known device (choices: auto, cpu, cuda)");
  const std::string checkpoint = resolve_checkpoint_arg("--checkpoint", o.checkpoint, o.run_dir);
  MOE_CHECK(std::filesystem::is_directory(checkpoint), "checkpoint directory ", checkpoint, " does not exist");
  Config config = load_config(checkpoint + "/config.toml");
  MOE_CHECK(config.model.objective == "causal_lm", "moe generate continues text with a causal model, but ", checkpoint,
            " has model.objective = '", config.model.objective, "', an encoder only (bidirectional attention) that "
            "fills masked positions; evaluate it with `moe eval`");
  config.train.device = o.device;
  Device device = select_device(config.train, 0);
  Model model(config.model, config.moe);
  if (device.is_cuda()) config.train.dtype = "";  // a CPU run's f64 becomes bf16 on the GPU
  model.allocate(device, select_dtype(config.train, device));
  read_checkpoint(checkpoint, model.params(), nullptr, o.verify);

  std::string tokenizer_path = o.tokenizer.empty() ? config.data.tokenizer : o.tokenizer;
  MOE_CHECK(!tokenizer_path.empty(), "no tokenizer: set data.tokenizer in the config or pass --tokenizer");
  data::Tokenizer tokenizer = data::Tokenizer::load(tokenizer_path);
  MOE_CHECK(tokenizer.vocab_size() <= config.model.vocab_size, "the tokenizer has ", tokenizer.vocab_size(),
            " tokens but model.vocab_size is ", config.model.vocab_size);
  std::vector<int32_t> tokens = tokenizer.encode(o.prompt);
  MOE_CHECK(!tokens.empty(), "the prompt encodes to no tokens");
  std::mt19937_64 rng(o.seed);
  const int64_t seq = config.model.seq_len;
  const size_t num_prompt = tokens.size();
  bool eos = false;
  for (int64_t i = 0; i < o.max_new_tokens && !eos; ++i) {
    // The last seq_len tokens, right-padded: causal attention makes the padding invisible.
    size_t begin = tokens.size() > static_cast<size_t>(seq) ? tokens.size() - seq : 0;
    std::vector<int32_t> window(tokens.begin() + static_cast<std::ptrdiff_t>(begin), tokens.end());
    int64_t last = static_cast<int64_t>(window.size()) - 1;
    window.resize(static_cast<size_t>(seq), 0);
    Tensor logits = model.logits(window, 1);
    std::vector<float> row = logits.rows(last, last + 1).to_vector<float>();
    // Ids past the tokenizer's pieces (a model vocabulary padded beyond it) have no text: never drawn.
    row.resize(static_cast<size_t>(tokenizer.vocab_size()));
    int32_t next = sample_token(row, o.sampling, rng);
    eos = next == tokenizer.eos_id();
    if (!eos) tokens.push_back(next);
  }
  std::printf("%s\n", tokenizer.decode(tokens).c_str());
  // On stderr, so stdout stays the text alone: how much was generated and why it stopped.
  std::fprintf(stderr, "generate: %zu new tokens after a %zu-token prompt (%s)\n", tokens.size() - num_prompt,
               num_prompt, eos ? "stopped at the end-of-sequence token" : "--max-new-tokens reached");
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("generate", "continue a prompt with a trained checkpoint");
  auto o = std::make_shared<GenerateOptions>();
  cmd->add_option("--checkpoint", o->checkpoint,
                  "checkpoint directory (holds config.toml), a run directory (its newest checkpoint), or 'latest'")
      ->required();
  cmd->add_option("--run-dir", o->run_dir, "run directory where --checkpoint latest looks");
  cmd->add_option("--prompt", o->prompt, "text to continue");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", o->sampling.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->sampling.top_p, "nucleus sampling mass")->check(CLI::Range(1e-6, 1.0));
  cmd->add_option("--top-k", o->sampling.top_k, "sample among the k likeliest tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->seed, "sampling seed");
  cmd->add_option("--tokenizer", o->tokenizer, "SentencePiece model (default: data.tokenizer of the config)");
  cmd->add_option("--device", o->device, "auto | cpu | cuda");
  cmd->add_flag("!--no-verify", o->verify, "skip the checkpoint files' CRC-32C check (very large checkpoints)");
  cmd->callback([&run, o] { run = [o](MpiEnv&) { return run_generate(*o); }; });
}

}  // namespace moe

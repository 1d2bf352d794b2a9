// Shared set-up of the training tests: a tiny MoE config over a random token shard in a
// temporary directory.
#pragma once

#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/config/span_lengths.h"
#include "src/data/token_shard.h"
#include "src/data/tokenizer.h"

namespace moe::test {

// A fresh directory under the system temp dir, removed on destruction.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name) {
    path = std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string str(const std::string& child = "") const { return (path / child).string(); }
};

// Tokens with some structure (a noisy repeating pattern) so that training lowers the loss.
inline void write_pattern_shard(const std::string& path, int64_t num_tokens, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> tokens(static_cast<size_t>(num_tokens));
  for (int64_t i = 0; i < num_tokens; ++i) {
    tokens[i] = rng() % 5 == 0 ? static_cast<uint32_t>(rng() % vocab) : static_cast<uint32_t>((i * 7) % vocab);
  }
  data::write_token_shard(path, tokens, data::TokenDType::u16);
}

// A run directory every rank of one mpirun names alike (ranks share the working directory) and
// that concurrent test runs from other build trees do not share.
inline std::string shared_run_dir(const std::string& name) {
  const size_t tree = std::hash<std::string>{}(std::filesystem::current_path().string()) % 1000000;
  return (std::filesystem::temp_directory_path() / (name + "-" + std::to_string(tree))).string();
}

inline Config tiny_train_config(const TempDir& dir, int64_t vocab = 32) {
  write_pattern_shard(dir.str("train.tok"), 4000, vocab, 1);
  write_pattern_shard(dir.str("val.tok"), 600, vocab, 2);
  Config c;
  c.model.vocab_size = vocab;
  c.model.d_model = 16;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 8;
  c.model.d_ff = 32;
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.d_expert = 16;
  c.moe.first_dense = 1;
  c.train.steps = 6;
  c.train.micro_batch_size = 4;
  c.train.grad_accum = 1;
  c.train.log_every = 1;
  c.train.eval_every = 3;
  c.train.eval_batches = 2;
  c.train.run_dir = dir.str("run");
  c.train.device = "cpu";
  c.optim.lr = 1e-2;
  c.schedule.warmup_steps = 2;
  c.data.train_path = dir.str("train.tok");
  c.data.val_path = dir.str("val.tok");
  validate_config(c);
  return c;
}

// The tiny model with whole heads, widths and vocabulary for up to 4 TP ranks, 4 layers for up
// to 4 stages (the first dense, three MoE layers with a shared expert), 4 micro-batches.
inline Config model_parallel_config(const TempDir& dir) {
  Config c = tiny_train_config(dir);
  c.model.num_layers = 4;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.moe.num_shared_experts = 1;
  c.moe.aux_loss_coef = 0.01;
  c.moe.z_loss_coef = 0.001;
  c.train.micro_batch_size = 2;
  c.train.grad_accum = 4;
  return c;
}

// Every balancing term besides the default Switch loss: importance, z, sequence-level and
// device-level (2 groups), and the load loss when the router draws gating noise (noisy_topk).
inline void enable_balancing_terms(Config& c, bool load) {
  c.moe.importance_loss_coef = 0.01;
  c.moe.load_loss_coef = load ? 0.01 : 0.0;
  c.moe.z_loss_coef = 0.001;
  c.moe.seq_aux_loss_coef = 0.01;
  c.moe.device_loss_coef = 0.01;
  c.moe.device_groups = 2;
}

// A small SentencePiece model trained on made-up words in well under a second; with
// special_tokens, those of `moe tokenize --special-tokens` (and 2 sentinels) at ids 3, 4, 5, ...
// ([MASK] = 3), else none.
inline std::string write_special_tokenizer(const TempDir& dir, bool special_tokens = true) {
  data::TokenizerTrainOptions o;
  o.model_path = dir.str(special_tokens ? "special.model" : "plain.model");
  o.vocab_size = 300;
  if (special_tokens) o.control_symbols = data::special_token_names(2);
  std::mt19937_64 rng(7);
  const char* syllables[] = {"ka", "lo", "mi", "ne", "su", "ta", "ri", "po"};
  for (int line = 0; line < 400; ++line) {
    std::string text;
    for (int word = 0; word < 8; ++word) {
      for (int s = 0; s < 1 + static_cast<int>(rng() % 3); ++s) text += syllables[rng() % 8];
      text += ' ';
    }
    o.sentences.push_back(text);
  }
  data::Tokenizer::train(o);
  return o.model_path;
}

// The config as a masked LM (BERT) over the same data, [MASK] from write_special_tokenizer.
inline void use_masked_lm(Config& c, const TempDir& dir) {
  c.model.objective = "masked_lm";
  c.data.tokenizer = write_special_tokenizer(dir);
  validate_config(c);
}

// The config as a T5 encoder-decoder trained with span corruption over the same data, the
// sentinels from write_special_tokenizer: the first half of the layers the encoder, the rest the
// decoder, MoE in every layer of both stacks; the decoder exactly as long as the target.
inline void use_span_corruption(Config& c, const TempDir& dir) {
  c.model.objective = "span_corruption";
  c.model.encoder_layers = c.model.num_layers / 2;
  c.model.decoder_seq_len =
      span_lengths_for_inputs(c.model.seq_len, c.objective.noise_density, c.objective.mean_span_length).targets;
  c.moe.first_dense = 0;
  c.data.tokenizer = write_special_tokenizer(dir);
  validate_config(c);
}

}  // namespace moe::test

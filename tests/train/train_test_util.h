// Shared set-up of the training tests: a tiny MoE config over a random token shard in a
// temporary directory.
#pragma once

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/data/token_shard.h"

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

}  // namespace moe::test

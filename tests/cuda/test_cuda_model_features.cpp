// CUDA vs CPU for the model features of the Hugging Face architectures: linear biases (add_bias,
// bias_backward), scaled rope (linear, llama3), and ten training steps of models with attention
// and FFN biases, QK-norm, LayerNorm, learned positions and rope scaling.
#include <catch2/catch.hpp>

#include <functional>

#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "src/ops/ops.h"
#include "src/train/trainer.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/cuda_train_util.h"
#include "tests/train/train_test_util.h"

namespace moe::test {
namespace {

const int64_t k_rows[] = {1, 7, 19, 989};

TEST_CASE("cuda add_bias and bias_backward match the CPU", "[cuda][bias]") {
  for (int64_t rows : k_rows) {
    for (int64_t cols : {int64_t{1}, int64_t{7}, int64_t{96}, int64_t{1000}}) {
      INFO("rows " << rows << " cols " << cols);
      const uint64_t seed = seed_of(71, {rows, cols});
      Mirror y = random_mirror({rows, cols}, DType::bf16, seed);
      Mirror b = random_mirror({cols}, DType::bf16, seed + 1);
      ops::add_bias(y.cpu, b.cpu);
      ops::add_bias(y.gpu, b.gpu);
      require_match(y, bf16_tol(), "add_bias");
      Mirror dy = random_mirror({rows, cols}, DType::bf16, seed + 2);
      Mirror db = random_mirror({cols}, DType::f32, seed + 3);  // accumulated into
      ops::bias_backward(dy.cpu, db.cpu);
      ops::bias_backward(dy.gpu, db.gpu);
      require_match(db, accum_tol(), "bias_backward");
    }
  }
}

TEST_CASE("cuda rope with linear and llama3 scaling matches the CPU", "[cuda][rope]") {
  const ops::RopeScaling scalings[] = {{ops::RopeScalingKind::linear, 4.0},
                                       {ops::RopeScalingKind::llama3, 8.0, 1.0, 4.0, 64.0}};
  for (const ops::RopeScaling& s : scalings) {
    for (bool inverse : {false, true}) {
      INFO("scaling " << static_cast<int>(s.kind) << " inverse " << inverse);
      Mirror x = random_mirror({2 * 300, 3 * 64}, DType::bf16, seed_of(72, {inverse, static_cast<int>(s.kind)}));
      ops::rope(x.cpu, 3, 300, 500000.0f, inverse, Tensor(), s);
      ops::rope(x.gpu, 3, 300, 500000.0f, inverse, Tensor(), s);
      require_match(x, bf16_tol(), "scaled rope");
    }
  }
}

// Ten steps of `c` on the CPU and on the GPU side by side: the losses track within bf16 tolerance.
void train_and_compare(const Config& c) {
  static MpiEnv env;  // NCCL bootstraps over MPI (a one-rank world here)
  double first = 0, last_cpu = 0;
  train_side_by_side(c, [&](const StepResult& r_cpu, const StepResult& r_gpu) {
    REQUIRE(r_gpu.loss == Approx(r_cpu.loss).epsilon(2e-2));
    if (first == 0) first = r_cpu.loss;
    last_cpu = r_cpu.loss;
  });
  REQUIRE(last_cpu < first);  // it is training, not just matching
}

TEST_CASE("CUDA training with biases, QK-norm, LayerNorm and rope scaling matches the CPU", "[cuda][train]") {
  TempDir dir("moe-cuda-features");
  Config c = tiny_train_config(dir);
  c.model.d_model = 64;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 32;
  c.moe.d_expert = 64;
  c.train.steps = 10;
  c.optim.lr = 3e-3;
  SECTION("dense: layernorm, all biases, ffn biases, qk_norm, llama3 rope") {
    c.moe.num_experts = 0;
    c.model.norm = "layernorm";
    c.model.attention_bias = "all";
    c.model.ffn_bias = true;
    c.model.qk_norm = true;
    c.model.rope_scaling = "llama3";
    c.model.rope_factor = 8.0;
    c.model.rope_original_max_positions = 16;
    validate_config(c);
    train_and_compare(c);
  }
  SECTION("dense GPT-2: learned positions, gelu, layernorm, all biases") {
    c.moe.num_experts = 0;
    c.model.norm = "layernorm";
    c.model.positions = "learned";
    c.model.activation = "gelu";
    c.model.attention_bias = "all";
    c.model.ffn_bias = true;
    validate_config(c);
    train_and_compare(c);
  }
  SECTION("MoE: qkv biases, qk_norm, linear rope") {
    c.model.attention_bias = "qkv";
    c.model.qk_norm = true;
    c.model.rope_scaling = "linear";
    c.model.rope_factor = 2.0;
    validate_config(c);
    train_and_compare(c);
  }
}

}  // namespace
}  // namespace moe::test

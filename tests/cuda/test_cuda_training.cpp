// Ten training steps of a tiny MoE model on the GPU (bf16, fp32 master weights) against the
// CPU reference (f32): the same data and initial weights give the same loss curve within
// bf16 tolerance; also with packed documents (document positions and masking), as a masked LM and
// as a span-corruption encoder-decoder.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "src/train/trainer.h"
#include "tests/cuda/cuda_train_util.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

using namespace moe;

namespace {

struct RouterVariant {
  const char* name;
  void (*apply)(Config&);
};

using test::train_side_by_side;

}  // namespace

TEST_CASE("CUDA training matches the CPU reference over 10 steps", "[cuda][train]") {
  static MpiEnv env;  // NCCL bootstraps over MPI (a one-rank world here)
  test::TempDir dir("moe-cuda-train");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = 64;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 32;
  c.moe.d_expert = 64;
  c.train.steps = 10;
  c.train.micro_batch_size = 8;
  c.train.grad_accum = 2;
  c.optim.lr = 3e-3;

  double first = 0, last_cpu = 0, last_gpu = 0;
  train_side_by_side(c, [&](const StepResult& r_cpu, const StepResult& r_gpu) {
    // bf16 activations (8-bit mantissa) through 2 layers: a few 1e-3 relative on the loss.
    REQUIRE(r_gpu.loss == Approx(r_cpu.loss).epsilon(2e-2));
    REQUIRE(r_gpu.aux_loss == Approx(r_cpu.aux_loss).epsilon(5e-2));
    if (first == 0) first = r_cpu.loss;
    last_cpu = r_cpu.loss;
    last_gpu = r_gpu.loss;
  });
  REQUIRE(last_cpu < first);  // it is training, not just matching
  REQUIRE(last_gpu < first);
}

// Every router and expert variant: ten steps on the GPU track the CPU reference.
TEST_CASE("CUDA matches the CPU for every router and expert variant", "[cuda][train][routing]") {
  static MpiEnv env;
  auto variant = GENERATE(
      RouterVariant{"softmax_topk renormalised, swiglu", [](Config& c) { c.moe.router = "softmax_topk"; }},
      RouterVariant{"softmax_topk, relu, capacity by probability",
                    [](Config& c) {
                      c.moe.renormalize = false;
                      c.moe.activation = "relu";
                      c.moe.capacity_factor = 1.0;
                    }},
      RouterVariant{"softmax_topk, capacity by probability, Switch on kept slots (moe.aux_count)",
                    [](Config& c) {
                      c.moe.capacity_factor = 1.0;
                      c.moe.aux_count = "kept";
                    }},
      RouterVariant{"topk_softmax, gelu, capacity by position",
                    [](Config& c) {
                      c.moe.router = "topk_softmax";
                      c.moe.activation = "gelu";
                      c.moe.capacity_factor = 1.0;
                      c.moe.drop_order = "position";
                    }},
      RouterVariant{"sigmoid, bias, groups, shared gated, geglu",
                    [](Config& c) {
                      c.moe.router = "sigmoid";
                      c.moe.expert_bias_rate = 0.01;
                      c.moe.num_groups = 2;
                      c.moe.top_groups = 1;
                      c.moe.num_shared_experts = 1;
                      c.moe.shared_gate = true;
                      c.moe.activation = "geglu";
                      c.moe.seq_aux_loss_coef = 0.01;
                    }},
      RouterVariant{"noisy_topk with importance and load losses",
                    [](Config& c) {
                      c.moe.router = "noisy_topk";
                      c.moe.importance_loss_coef = 0.01;
                      c.moe.load_loss_coef = 0.01;
                    }},
      RouterVariant{"noisy_topk with every balancing term (each on the device)",
                    [](Config& c) {
                      c.moe.router = "noisy_topk";
                      test::enable_balancing_terms(c, true);
                    }},
      RouterVariant{"softmax_topk, capacity by probability, every term but load", [](Config& c) {
                      c.moe.capacity_factor = 1.0;
                      test::enable_balancing_terms(c, false);
                    }},
      RouterVariant{"expert_choice, z-loss", [](Config& c) {
                      c.moe.router = "expert_choice";
                      c.moe.capacity_factor = 2.0;
                      c.moe.z_loss_coef = 0.001;
                    }},
      RouterVariant{"hash random, fine-grained", [](Config& c) {
                      c.moe.router = "hash";
                      c.moe.top_k = 1;
                      c.moe.granularity = 2;
                    }});
  INFO(variant.name);
  test::TempDir dir("moe-cuda-variant");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = 32;
  c.model.seq_len = 16;
  c.moe.d_expert = 32;
  c.moe.device_loss_coef = 0.0;
  variant.apply(c);
  validate_config(c);
  train_side_by_side(c, [](const StepResult& r_cpu, const StepResult& r_gpu) {
    // bf16 activations may flip a near-tied routing choice; the loss still agrees closely.
    REQUIRE(r_gpu.loss == Approx(r_cpu.loss).epsilon(3e-2));
    REQUIRE(r_gpu.routing.size() == r_cpu.routing.size());
    for (size_t i = 0; i < r_cpu.routing.size(); ++i) {
      REQUIRE(r_gpu.routing[i].balance.size() == r_cpu.routing[i].balance.size());
      REQUIRE(r_gpu.routing[i].aux_loss == Approx(r_cpu.routing[i].aux_loss).epsilon(0.1).margin(1e-4));
      // A GPU logging step keeps its statistics on the device and reads them at the step's end:
      // every slot is counted once (kept or dropped), the entropy agrees within bf16 tolerance.
      const LayerRoutingStats &cpu = r_cpu.routing[i], &gpu = r_gpu.routing[i];
      REQUIRE(gpu.tokens_per_expert.size() == cpu.tokens_per_expert.size());
      REQUIRE(gpu.slots == cpu.slots);
      int64_t kept = 0;
      for (int64_t n : gpu.tokens_per_expert) kept += n;
      REQUIRE(kept + gpu.dropped == gpu.slots);
      REQUIRE(gpu.entropy == Approx(cpu.entropy).epsilon(0.02).margin(1e-6));
    }
  });
}

// Packed documents (model.reset_positions / reset_attention, EOS every ~32 tokens of the pattern
// shard): the flash kernels (head dim 64, rope) and the fp32 fallback (head dim 16, learned
// positions, whose backward adds atomically) train as the CPU does.
TEST_CASE("CUDA training with packed documents matches the CPU reference", "[cuda][train][documents]") {
  static MpiEnv env;
  struct Shape {
    int64_t d_model, heads;
    const char* positions;
  };
  auto shape = GENERATE(Shape{128, 2, "rope"}, Shape{64, 4, "learned"});
  INFO("d_model " << shape.d_model << " heads " << shape.heads << " positions " << shape.positions);
  test::TempDir dir("moe-cuda-documents");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = shape.d_model;
  c.model.num_heads = shape.heads;
  c.model.num_kv_heads = 1;
  c.model.positions = shape.positions;
  c.model.seq_len = 64;
  c.model.reset_positions = true;
  c.model.reset_attention = true;
  c.moe.d_expert = 64;
  c.train.steps = 10;
  c.train.micro_batch_size = 4;
  validate_config(c);
  // Step 1 checks the forward; later steps the backward through the non-causal kernels (a masked
  // LM learns too slowly for 10 steps to show a falling loss: train_masked_lm shows that).
  train_side_by_side(c, [&](const StepResult& r_cpu, const StepResult& r_gpu) {
    REQUIRE(r_gpu.loss == Approx(r_cpu.loss).epsilon(3e-2));
    REQUIRE(r_gpu.aux_loss == Approx(r_cpu.aux_loss).epsilon(5e-2));
  });
}

// Masked LM: the bidirectional (non-causal) flash kernels, masked targets and the masked-token
// accuracy train and evaluate as on the CPU; with next-sentence prediction, its head and loss too.
TEST_CASE("CUDA masked LM training matches the CPU reference", "[cuda][train][masked_lm]") {
  static MpiEnv env;
  const bool nsp = GENERATE(false, true);
  INFO((nsp ? "with" : "without") << " next-sentence prediction");
  test::TempDir dir("moe-cuda-mlm");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = 128;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 32;
  c.moe.d_expert = 64;
  c.train.steps = 10;
  c.train.micro_batch_size = 8;
  c.optim.lr = 3e-3;
  c.objective.nsp = nsp;
  test::use_masked_lm(c, dir);
  // Step 1 checks the forward; later steps the backward through the non-causal kernels (a masked
  // LM learns too slowly for 10 steps to show a falling loss: train_masked_lm shows that).
  // The Switch term (>= aux_loss_coef = 0.01) moves with the routing of single tokens, which bf16
  // flips after a few updates: within 10% of its floor (seen: 0.0119 against 0.0111 at step 9).
  // The next-sentence loss is a mean over 8 pairs a step: within 8% (seen: 0.643 against 0.677 at
  // step 7, the same with the update on either stream, first after the combine began adding the
  // residual and shared output in its own pass and the router its statistics; not traced to one
  // change. The LM loss agrees within 1%). A broken head is far outside it.
  train_side_by_side(c, [&](const StepResult& r_cpu, const StepResult& r_gpu) {
    REQUIRE(r_gpu.loss == Approx(r_cpu.loss).epsilon(3e-2));
    REQUIRE(r_gpu.aux_loss == Approx(r_cpu.aux_loss).epsilon(5e-2).margin(1e-3));
    REQUIRE((r_gpu.nsp_loss >= 0) == nsp);
    if (nsp) REQUIRE(r_gpu.nsp_loss == Approx(r_cpu.nsp_loss).epsilon(8e-2));
  });
}

// Span corruption: the encoder-decoder's bidirectional encoder, causal decoder and the
// cross-attention kernels (queries of the decoder's 8 positions over the encoder's 32), the
// memory gradient summed over the decoder layers, MoE in both stacks, as on the CPU.
TEST_CASE("CUDA span-corruption encoder-decoder training matches the CPU reference", "[cuda][train][span]") {
  static MpiEnv env;
  test::TempDir dir("moe-cuda-span");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = 128;
  c.model.num_layers = 4;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 32;
  c.moe.d_expert = 64;
  c.moe.every = 2;
  c.train.steps = 10;
  c.train.micro_batch_size = 8;
  c.optim.lr = 3e-3;
  test::use_span_corruption(c, dir);  // 2 + 2 layers; raw windows of 34 tokens, a target of 8
  REQUIRE(c.model.decoder_seq_len == 8);
  train_side_by_side(c, [&](const StepResult& r_cpu, const StepResult& r_gpu) {
    REQUIRE(r_gpu.loss == Approx(r_cpu.loss).epsilon(3e-2));
    REQUIRE(r_gpu.aux_loss == Approx(r_cpu.aux_loss).epsilon(5e-2));
    REQUIRE(r_gpu.routing.size() == 2);  // the encoder's MoE layer and the decoder's
  });
}

// parallel.shared_expert_stream: the shared experts on a second stream beside the routed part give
// the losses of the same steps with everything on one stream (the shared experts' input gradient is
// added by the un-permute instead of into the routed one: bf16 rounding only).
TEST_CASE("CUDA shared experts on the side stream train as on one stream", "[cuda][train][shared]") {
  static MpiEnv env;
  test::TempDir dir("moe-cuda-side-stream");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = 32;
  c.model.seq_len = 16;
  c.moe.d_expert = 32;
  c.moe.num_shared_experts = 2;
  c.moe.shared_gate = true;
  c.train.device = "cuda";
  Config one_stream = c;
  one_stream.parallel.shared_expert_stream = false;
  c.parallel.shared_expert_stream = true;
  validate_config(c);
  auto world = make_world_communicator(Device::cuda(0));
  Trainer side(c, 0, *world), plain(one_stream, 0, *world);
  for (int step = 1; step <= 10; ++step) {
    const StepResult a = side.train_step(), b = plain.train_step();
    INFO("step " << step << " side stream " << a.loss << " one stream " << b.loss);
    REQUIRE(std::isfinite(a.loss));
    REQUIRE(a.loss == Approx(b.loss).epsilon(5e-3));
  }
}

namespace moe::test {

// parallel.overlap_update: the update by unit on its own stream, each unit waited for where the
// next forward reaches it, gives the losses and weights of the update in one pass on the main
// stream (the same arithmetic; only the order of atomic additions elsewhere differs), with the
// aux-loss-free bias update inside it, gradient accumulation and clipping. Only the first and
// last steps read anything back (log_every past the run), so the steps between overlap the update
// with the next forward; then an evaluation and a checkpoint join it.
TEST_CASE("CUDA update overlapping the next forward trains as the update on the main stream",
          "[cuda][train][overlap_update]") {
  static MpiEnv env;
  test::TempDir dir("moe-cuda-overlap-update");
  Config c = test::tiny_train_config(dir);
  c.model.d_model = 32;
  c.moe.d_expert = 32;
  c.moe.router = "sigmoid";
  c.moe.expert_bias_rate = 0.01;
  c.moe.num_shared_experts = 1;
  c.train.grad_accum = 2;
  c.train.steps = 12;
  c.train.log_every = 1000;
  c.optim.grad_clip = 0.05;  // small: every step clips
  c.train.device = "cuda";
  Config plain_config = c;
  plain_config.parallel.overlap_update = false;
  plain_config.train.run_dir = dir.str("run_plain");
  c.parallel.overlap_update = true;
  validate_config(c);
  validate_config(plain_config);
  auto world = make_world_communicator(Device::cuda(0));
  Trainer overlapped(c, 0, *world), plain(plain_config, 0, *world);
  for (int step = 1; step <= 10; ++step) {
    const StepResult a = overlapped.train_step(), b = plain.train_step();
    INFO("step " << step << " overlapped " << a.loss << " plain " << b.loss);
    REQUIRE(std::isnan(a.loss) == (step > 1));  // read back on the first step only
    if (step == 1) REQUIRE(a.loss == Approx(b.loss).epsilon(1e-4));
  }
  // model() finishes the update; the weights after ten overlapped updates equal the plain ones.
  ParamStore &pa = overlapped.model().params(), &pb = plain.model().params();
  for (ParamGroup g : {ParamGroup::dense, ParamGroup::expert}) {
    test::require_close(pa.flat_master(g), pb.flat_master(g), 1e-4, 1e-3, "master weights");
  }
  REQUIRE(overlapped.evaluate(2).loss == Approx(plain.evaluate(2).loss).epsilon(1e-4));
  overlapped.save_checkpoint();
  overlapped.train_step();
  plain.train_step();
  const StepResult a12 = overlapped.train_step(), b12 = plain.train_step();  // the last step reads its loss
  REQUIRE(std::isfinite(a12.loss));
  REQUIRE(a12.loss == Approx(b12.loss).epsilon(1e-4));
}

}  // namespace moe::test

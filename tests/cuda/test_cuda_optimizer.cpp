// The optimizer kernels on the GPU against the CPU reference (fused AdamW over a run table with the clip
// scale and the bf16 compute copy; device sums and the clip scale), and the host waits of a step that
// does not log (0: nothing is read back), dense and MoE with every balancing term and the expert bias.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "src/ops/op_profile.h"
#include "src/ops/ops.h"
#include "src/train/trainer.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/train/train_test_util.h"

using namespace moe;
using test::gpu;

namespace {

// Runs covering [0, n): decay, no_decay and copy in turn, lengths 1, 2, 3, ... (awkward cuts).
std::vector<int64_t> run_table(int64_t n) {
  std::vector<int64_t> flat;
  int64_t at = 0, len = 1, kind = 0;
  while (at < n) {
    const int64_t end = std::min(n, at + len);
    flat.insert(flat.end(), {at, end, kind});
    at = end;
    ++len;
    kind = (kind + 1) % 3;
  }
  return flat;
}

}  // namespace

TEST_CASE("cuda fused AdamW matches the CPU reference with runs, clip scale and the bf16 copy", "[cuda][optimizer]") {
  for (int64_t n : {1, 7, 989, 20000}) {
    INFO("n " << n);
    auto master = test::random_mirror({n}, DType::f32, test::seed_of(1, {n}));
    auto grad = test::random_mirror({n}, DType::f32, test::seed_of(2, {n}));
    auto m = test::random_mirror({n}, DType::f32, test::seed_of(3, {n}), -0.1, 0.1);
    auto v = test::random_mirror({n}, DType::f32, test::seed_of(4, {n}), 0.0, 0.1);
    const std::vector<int64_t> flat = run_table(n);
    const Shape table_shape{static_cast<int64_t>(flat.size() / 3), 3};
    Tensor runs_cpu = Tensor::from_vector(flat, table_shape, DType::i64);
    Tensor runs_gpu = Tensor::from_vector(flat, table_shape, DType::i64, gpu());
    Tensor scale_cpu = Tensor::from_vector(std::vector<float>{0.375f}, {1}, DType::f32);
    Tensor scale_gpu = Tensor::from_vector(std::vector<float>{0.375f}, {1}, DType::f32, gpu());
    Tensor copy_cpu = test::poisoned_on({n}, DType::f32, Device::cpu());
    Tensor copy_gpu = test::poisoned_on({n}, DType::bf16, gpu());
    ops::AdamWParams p;
    p.lr = 1e-2f;
    p.weight_decay = 0.1f;
    p.step = 3;
    ops::adamw_fused(master.cpu, grad.cpu, m.cpu, v.cpu, runs_cpu, scale_cpu, p, copy_cpu);
    ops::adamw_fused(master.gpu, grad.gpu, m.gpu, v.gpu, runs_gpu, scale_gpu, p, copy_gpu);
    test::require_match(master, test::accum_tol(), "master");
    test::require_match(m, test::accum_tol(), "m");
    test::require_match(v, test::accum_tol(), "v");
    test::require_close(copy_gpu, copy_cpu, test::bf16_tol().atol, test::bf16_tol().rtol, "bf16 copy");
  }
}

TEST_CASE("cuda device sums and the clip scale match the CPU", "[cuda][optimizer]") {
  for (int64_t n : {1, 7, 989, 300000}) {
    auto x = test::random_mirror({n}, DType::f32, test::seed_of(5, {n}));
    Tensor acc_cpu = Tensor::from_vector(std::vector<double>{0.5}, {1}, DType::f64);
    Tensor acc_gpu = Tensor::from_vector(std::vector<double>{0.5}, {1}, DType::f64, gpu());
    ops::sum_squares_accumulate(x.cpu, acc_cpu, 2.0);
    ops::sum_squares_accumulate(x.gpu, acc_gpu, 2.0);
    ops::sum_accumulate(x.cpu, acc_cpu);
    ops::sum_accumulate(x.gpu, acc_gpu);
    test::require_close(acc_gpu, acc_cpu, 1e-9, 1e-9, "sums");
    for (double max_norm : {0.0, 0.25, 1e9}) {
      Tensor s_cpu = test::poisoned_on({1}, DType::f32, Device::cpu());
      Tensor s_gpu = test::poisoned_on({1}, DType::f32, gpu());
      ops::clip_scale(acc_cpu, max_norm, s_cpu);
      ops::clip_scale(acc_gpu, max_norm, s_gpu);
      test::require_close(s_gpu, s_cpu, 0.0, 1e-6, "clip scale");
    }
  }
}

TEST_CASE("cuda: a non-finite norm makes a NaN clip scale, the fused AdamW skips, the skip is recorded",
          "[cuda][optimizer]") {
  const int64_t n = 989;
  auto master = test::random_mirror({n}, DType::f32, test::seed_of(6, {n}));
  auto grad = test::random_mirror({n}, DType::f32, test::seed_of(7, {n}));
  auto m = test::random_mirror({n}, DType::f32, test::seed_of(8, {n}), -0.1, 0.1);
  auto v = test::random_mirror({n}, DType::f32, test::seed_of(9, {n}), 0.0, 0.1);
  const std::vector<float> master_before = master.gpu.to_vector<float>(), m_before = m.gpu.to_vector<float>(),
                           v_before = v.gpu.to_vector<float>();
  const std::vector<int64_t> flat = run_table(n);
  Tensor runs = Tensor::from_vector(flat, {static_cast<int64_t>(flat.size() / 3), 3}, DType::i64, gpu());
  // The bf16 compute copy starts finite and unlike the master (a NaN poison would never compare
  // equal to itself), so a skipped update that wrote it would show.
  Tensor copy = test::random_mirror({n}, DType::bf16, test::seed_of(10, {n}), 2.0, 3.0).gpu;
  const std::vector<float> copy_before = copy.to_vector<float>();
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    Tensor sum_sq = Tensor::from_vector(std::vector<double>{1.0, bad}, {2}, DType::f64, gpu());
    Tensor scale = test::poisoned_on({1}, DType::f32, gpu());
    ops::clip_scale(sum_sq, 1.0, scale);
    REQUIRE(std::isnan(scale.to_vector<float>()[0]));
    ops::AdamWParams p;
    p.lr = 1e-2f;
    p.step = 3;
    ops::adamw_fused(master.gpu, grad.gpu, m.gpu, v.gpu, runs, scale, p, copy);
    REQUIRE(master.gpu.to_vector<float>() == master_before);
    REQUIRE(m.gpu.to_vector<float>() == m_before);
    REQUIRE(v.gpu.to_vector<float>() == v_before);
    REQUIRE(copy.to_vector<float>() == copy_before);
  }
  // A finite scale then updates the master and writes its bf16 copy (the kernel writes the copy).
  Tensor one = Tensor::from_vector(std::vector<float>{1.0f}, {1}, DType::f32, gpu());
  ops::AdamWParams p;
  p.lr = 1e-2f;
  p.step = 3;
  ops::adamw_fused(master.gpu, grad.gpu, m.gpu, v.gpu, runs, one, p, copy);
  REQUIRE(master.gpu.to_vector<float>() != master_before);
  const std::vector<float> updated = master.gpu.to_vector<float>();
  test::require_close(copy, Tensor::from_vector(updated, {n}, DType::f32), test::bf16_tol().atol,
                      test::bf16_tol().rtol, "bf16 copy after a finite scale");
  Tensor state_gpu = Tensor::zeros({5}, DType::f64, gpu());
  Tensor state_cpu = Tensor::zeros({5}, DType::f64);
  const std::vector<float> scales{0.5f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN(),
                                  1.0f, std::numeric_limits<float>::quiet_NaN()};
  for (size_t i = 0; i < scales.size(); ++i) {
    ops::record_skipped_step(Tensor::from_vector(std::vector<float>{scales[i]}, {1}, DType::f32, gpu()), state_gpu,
                             static_cast<int64_t>(i + 1));
    ops::record_skipped_step(Tensor::from_vector(std::vector<float>{scales[i]}, {1}, DType::f32), state_cpu,
                             static_cast<int64_t>(i + 1));
  }
  REQUIRE(state_gpu.to_vector<double>() == state_cpu.to_vector<double>());
  REQUIRE(state_cpu.to_vector<double>() == std::vector<double>{3, 1, 2, 2, 5});
}

namespace {

struct StepVariant {
  const char* name;
  void (*apply)(Config&);
};

}  // namespace

TEST_CASE("a CUDA step that does not log waits for the host 0 times: dense, and MoE with every balancing term",
          "[cuda][train]") {
  static MpiEnv env;
  auto variant = GENERATE(
      StepVariant{"dense", [](Config& c) { c.moe.num_experts = 0; }},
      StepVariant{"noisy top-k MoE with every balancing term",
                  [](Config& c) {
                    c.moe.router = "noisy_topk";
                    test::enable_balancing_terms(c, true);
                  }},
      StepVariant{"sigmoid MoE with the aux-loss-free expert bias and every term but load",
                  [](Config& c) {
                    c.moe.router = "sigmoid";
                    c.moe.expert_bias_rate = 0.01;
                    test::enable_balancing_terms(c, false);
                  }});
  INFO(variant.name);
  test::TempDir dir("moe-cuda-waits");
  Config c = test::tiny_train_config(dir);
  variant.apply(c);
  c.train.device = "cuda";
  c.train.steps = 10;
  c.train.log_every = 5;
  c.train.grad_accum = 2;
  c.optim.grad_clip = 0.5;
  validate_config(c);
  auto world = make_world_communicator(Device::cuda(0));
  Trainer trainer(c, 0, *world);
  REQUIRE(trainer.device().is_cuda());
  StepResult first = trainer.train_step();  // step 1 logs
  REQUIRE(std::isfinite(first.loss));
  const int64_t before = ops::host_waits();
  StepResult quiet = trainer.train_step();  // step 2: no log, no checkpoint
  REQUIRE(ops::host_waits() - before == 0);
  REQUIRE(std::isnan(quiet.loss));
  for (int step = 3; step <= 5; ++step) quiet = trainer.train_step();  // step 5 logs: the values are read
  REQUIRE(std::isfinite(quiet.loss));
  REQUIRE(std::isfinite(quiet.aux_loss));
  if (c.moe.num_experts > 0) REQUIRE(quiet.aux_loss > 0);
}

TEST_CASE("cuda: a non-finite gradient on a step that reads nothing is skipped on the device and found later",
          "[cuda][train]") {
  static MpiEnv env;
  test::TempDir dir("moe-cuda-nonfinite");
  Config c = test::tiny_train_config(dir);
  c.train.device = "cuda";
  c.train.steps = 5;
  c.train.log_every = 5;  // steps 2-4 read nothing
  c.train.eval_every = 0;
  c.data.val_path.clear();
  auto poison_step_2 = [](int64_t step, ParamStore& store) {
    if (step != 2) return;
    Tensor one = store.flat_grads(ParamGroup::dense).rows(3, 4);
    one.copy_from(Tensor::from_vector(std::vector<float>{std::numeric_limits<float>::quiet_NaN()}, {1}, DType::f32));
  };
  auto world = make_world_communicator(Device::cuda(0));
  SECTION("stop names the skipped step at the next step that reads") {
    Trainer trainer(c, 0, *world);
    trainer.set_before_update_hook(poison_step_2);
    REQUIRE_THROWS_WITH(trainer.train(), Catch::Matchers::Contains("gradient norm is not finite at step 2") &&
                                             Catch::Matchers::Contains("found at step 5"));
  }
  SECTION("skip_step counts it and finishes") {
    c.train.nonfinite = "skip_step";
    Trainer trainer(c, 0, *world);
    trainer.set_before_update_hook(poison_step_2);
    StepResult r;
    for (int i = 0; i < 5; ++i) r = trainer.train_step();
    REQUIRE(r.skipped_steps == 1);
    REQUIRE(!r.skipped);
    REQUIRE(std::isfinite(r.loss));
  }
}

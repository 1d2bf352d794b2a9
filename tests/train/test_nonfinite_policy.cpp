// The NaN/Inf policy (train.nonfinite, max_skipped_steps, loss_spike_factor): a skipped step
// leaves weights and moments bit-identical and equals a run without that step; "stop" names the
// step; the spike guard; the ops underneath (a NaN clip scale skips the fused AdamW).
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"
#include "src/io/checksum_manifest.h"
#include "src/io/safetensors.h"
#include "src/ops/ops.h"
#include "src/train/step_guard.h"
#include "src/train/trainer.h"
#include "src/util/crc32c.h"
#include "tests/train/train_test_util.h"

using namespace moe;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

constexpr float k_nan = std::numeric_limits<float>::quiet_NaN();

// Poisons one dense gradient at the given 1-based steps (a deterministic "bad batch").
std::function<void(int64_t, ParamStore&)> poison_at(std::vector<int64_t> steps) {
  return [steps](int64_t step, ParamStore& store) {
    if (std::find(steps.begin(), steps.end(), step) != steps.end()) {
      store.flat_grads(ParamGroup::dense).data_as<float>()[3] = k_nan;
    }
  };
}

// Every tensor of both files of two checkpoints is bit-identical.
void require_same_checkpoint(const std::string& a, const std::string& b) {
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    SafetensorsFile x = read_safetensors(a + "/" + file), y = read_safetensors(b + "/" + file);
    REQUIRE(x.tensors.size() == y.tensors.size());
    for (const auto& [name, t] : x.tensors) {
      INFO(file << " " << name);
      REQUIRE(y.tensors.count(name) == 1);
      REQUIRE(t.to_vector<float>() == y.tensors.at(name).to_vector<float>());
    }
  }
}

Config skip_config(const test::TempDir& dir) {
  Config c = test::tiny_train_config(dir);
  c.train.nonfinite = "skip_step";
  c.train.eval_every = 0;
  c.data.val_path.clear();
  return c;
}

}  // namespace

TEST_CASE("skip_step: a bad step leaves weights and moments untouched and equals a run without it",
          "[train][nonfinite]") {
  test::TempDir dir("moe-nonfinite-skip");
  Config c = skip_config(dir);
  auto world = make_world_communicator(Device::cpu());
  Trainer a(c, 0, *world);
  a.set_before_update_hook(poison_at({3}));
  REQUIRE(!a.train_step().skipped);
  a.train_step();
  a.save_checkpoint();  // step_2
  StepResult bad = a.train_step();
  REQUIRE(bad.skipped);
  REQUIRE(bad.skipped_steps == 1);
  REQUIRE(std::isnan(bad.grad_norm));
  REQUIRE(std::isfinite(bad.loss));  // the forward was fine; the gradient was not
  a.save_checkpoint();               // step_3: the same weights and moments as step_2
  const std::string ckpts = c.train.run_dir + "/checkpoints/";
  require_same_checkpoint(ckpts + "step_2", ckpts + "step_3");

  // A run without step 3: step 2's weights and moments, continuing at step 4 (the same batch,
  // learning rate and AdamW step count).
  const std::string without = dir.str("without_step_3");
  fs::copy(ckpts + "step_2", without);
  nlohmann::json state;
  std::ifstream(without + "/trainer_state.json") >> state;
  state["step"] = 3;
  const std::string relabelled = state.dump();
  std::ofstream(without + "/trainer_state.json") << relabelled;
  // The relabelled file's entry in checksums.json too (a hand edit alone is refused on load), so
  // the copy still loads with every file verified.
  ChecksumManifest manifest = read_checksum_manifest(without).value();
  manifest.at("trainer_state.json") = {relabelled.size(), crc32c(relabelled.data(), relabelled.size())};
  write_checksum_manifest(without, manifest);
  Config cb = c;
  cb.train.run_dir = dir.str("run_b");
  Trainer b(cb, 0, *world);
  b.load_checkpoint(without, true);
  REQUIRE(b.step() == 3);
  StepResult ra = a.train_step(), rb = b.train_step();
  REQUIRE(!ra.skipped);
  REQUIRE(ra.skipped_steps == 1);  // still counted
  REQUIRE(ra.loss == rb.loss);
  ParamStore& pa = a.model().params();
  ParamStore& pb = b.model().params();
  for (size_t i = 0; i < pa.infos().size(); ++i) {
    INFO(pa.infos()[i].name);
    REQUIRE(pa.master(static_cast<ParamId>(i)).to_vector<float>() == pb.master(static_cast<ParamId>(i)).to_vector<float>());
  }
}

TEST_CASE("skip_step: the run stops after train.max_skipped_steps consecutive skips", "[train][nonfinite][errors]") {
  test::TempDir dir("moe-nonfinite-max");
  Config c = skip_config(dir);
  c.train.max_skipped_steps = 3;
  c.train.save_every = 1;
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  trainer.set_before_update_hook(poison_at({2, 4, 5, 6}));  // one skip, then three in a row
  REQUIRE_THROWS_WITH(trainer.train(), Contains("3 consecutive steps skipped (the last at step 6, "
                                                "train.max_skipped_steps = 3)") &&
                                           Contains("training diverged"));
  REQUIRE(trainer.step() == 5);  // step 6 never completed
  REQUIRE(fs::exists(c.train.run_dir + "/checkpoints/step_5"));
  REQUIRE(!fs::exists(c.train.run_dir + "/checkpoints/step_6"));
}

TEST_CASE("stop: a non-finite gradient norm ends the run naming the step, before the update",
          "[train][nonfinite][errors]") {
  test::TempDir dir("moe-nonfinite-stop");
  Config c = test::tiny_train_config(dir);
  c.train.save_every = 1;
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  trainer.set_before_update_hook(poison_at({2}));
  REQUIRE_THROWS_WITH(trainer.train(), Contains("gradient norm is nan at step 2 (rank 0): training diverged") &&
                                           Contains("train.nonfinite = \"skip_step\""));
  REQUIRE(fs::exists(c.train.run_dir + "/checkpoints/step_1"));
  REQUIRE(!fs::exists(c.train.run_dir + "/checkpoints/step_2"));
}

TEST_CASE("the loss-spike guard treats a 1.2e13 loss like a non-finite one", "[train][nonfinite]") {
  TrainConfig t;
  StepGuard guard(t, Device::cpu());  // the default factor, 100
  REQUIRE(guard.judge(5.0, 1.0).empty());  // nothing to compare with yet
  for (double loss : {5.5, 5.0, 4.5}) guard.accept(loss);
  REQUIRE(guard.judge(499.0, 1.0).empty());  // below 100 x the mean 5
  REQUIRE_THAT(guard.judge(1.2e13, 1.0),
               Contains("loss is 1.2e+13 (above train.loss_spike_factor = 100 x the mean 5 of the last 3 steps)"));
  REQUIRE(guard.judge(std::nan(""), 1.0) == "loss is nan");
  REQUIRE(guard.judge(5.0, std::numeric_limits<double>::infinity()) == "gradient norm is inf");
  // The window keeps the last 20 losses: after 20 losses of 1e6 the mean is 1e6.
  for (int i = 0; i < 20; ++i) guard.accept(1e6);
  REQUIRE(guard.judge(5e7, 1.0).empty());
  t.loss_spike_factor = 0;  // off
  StepGuard off(t, Device::cpu());
  off.accept(5.0);
  REQUIRE(off.judge(1.2e13, 1.0).empty());
}

TEST_CASE("a loss spike in training stops the run, or is skipped", "[train][nonfinite][errors]") {
  test::TempDir dir("moe-nonfinite-spike");
  auto world = make_world_communicator(Device::cpu());
  // The step-3 update multiplies every weight by 1e3 (the hook scales the weights themselves),
  // so step 4's loss is huge but finite.
  auto blow_up = [](int64_t step, ParamStore& store) {
    if (step != 3) return;
    for (size_t i = 0; i < store.infos().size(); ++i) {
      Tensor w = store.master(static_cast<ParamId>(i));
      for (int64_t e = 0; e < w.numel(); ++e) w.data_as<float>()[e] *= 1e3f;
    }
  };
  SECTION("stop") {
    Config c = test::tiny_train_config(dir);
    Trainer trainer(c, 0, *world);
    trainer.set_before_update_hook(blow_up);
    REQUIRE_THROWS_WITH(trainer.train(), Contains("above train.loss_spike_factor = 100 x the mean") &&
                                             Contains("at step 4 (rank 0): training diverged"));
  }
  SECTION("skip_step") {
    Config c = skip_config(dir);
    c.train.max_skipped_steps = 2;
    Trainer trainer(c, 0, *world);
    trainer.set_before_update_hook(blow_up);
    // The spiking weights stay (a skip does not undo them): steps 4 and 5 skip, then the run stops.
    REQUIRE_THROWS_WITH(trainer.train(), Contains("2 consecutive steps skipped (the last at step 5"));
  }
}

TEST_CASE("a NaN clip scale makes the fused AdamW leave everything alone", "[train][nonfinite][ops]") {
  const int64_t n = 7;
  Tensor sum_sq = Tensor::from_vector(std::vector<double>{1.0, std::numeric_limits<double>::infinity()}, {2}, DType::f64);
  Tensor scale = Tensor::zeros({1}, DType::f32);
  ops::clip_scale(sum_sq, 1.0, scale);
  REQUIRE(std::isnan(scale.to_vector<float>()[0]));
  sum_sq = Tensor::from_vector(std::vector<double>{std::nan(""), 1.0}, {2}, DType::f64);
  ops::clip_scale(sum_sq, 0.0, scale);  // no clipping asked, still NaN
  REQUIRE(std::isnan(scale.to_vector<float>()[0]));
  sum_sq = Tensor::from_vector(std::vector<double>{3.0, 1.0}, {2}, DType::f64);
  ops::clip_scale(sum_sq, 1.0, scale);
  REQUIRE(scale.to_vector<float>()[0] == 0.5f);

  std::vector<float> init{1, -2, 3, -4, 5, -6, 7};
  Tensor master = Tensor::from_vector(init, {n}, DType::f32);
  Tensor grad = Tensor::from_vector(std::vector<float>{k_nan, 1, 1, 1, 1, 1, 1}, {n}, DType::f32);
  Tensor m = Tensor::from_vector(std::vector<float>(7, 0.25f), {n}, DType::f32);
  Tensor v = Tensor::from_vector(std::vector<float>(7, 0.5f), {n}, DType::f32);
  Tensor runs = Tensor::from_vector(std::vector<int64_t>{0, n, 0}, {1, 3}, DType::i64);
  Tensor copy = Tensor::from_vector(std::vector<float>(7, 9.0f), {n}, DType::f32);
  Tensor nan_scale = Tensor::from_vector(std::vector<float>{k_nan}, {1}, DType::f32);
  ops::AdamWParams p;
  p.lr = 0.1f;
  p.step = 2;
  ops::adamw_fused(master, grad, m, v, runs, nan_scale, p, copy);
  REQUIRE(master.to_vector<float>() == init);
  REQUIRE(m.to_vector<float>() == std::vector<float>(7, 0.25f));
  REQUIRE(v.to_vector<float>() == std::vector<float>(7, 0.5f));
  REQUIRE(copy.to_vector<float>() == std::vector<float>(7, 9.0f));
  Tensor one = Tensor::from_vector(std::vector<float>{1.0f}, {1}, DType::f32);
  grad.data_as<float>()[0] = 1;
  ops::adamw_fused(master, grad, m, v, runs, one, p, copy);  // a finite scale updates
  REQUIRE(master.to_vector<float>() != init);
  REQUIRE(copy.to_vector<float>() == master.to_vector<float>());
}

TEST_CASE("the skip record counts skipped steps and runs of them", "[train][nonfinite][ops]") {
  Tensor state = Tensor::zeros({5}, DType::f64);
  Tensor nan_scale = Tensor::from_vector(std::vector<float>{k_nan}, {1}, DType::f32);
  Tensor ok_scale = Tensor::from_vector(std::vector<float>{0.5f}, {1}, DType::f32);
  const std::vector<bool> skipped{false, true, true, false, true, true, true, false};
  for (size_t i = 0; i < skipped.size(); ++i) {
    ops::record_skipped_step(skipped[i] ? nan_scale : ok_scale, state, static_cast<int64_t>(i + 1));
  }
  // 5 skipped in all, none in a row at the end, the longest run 3, first step 2, last step 7.
  REQUIRE(state.to_vector<double>() == std::vector<double>{5, 0, 3, 2, 7});
  REQUIRE_THROWS_WITH(ops::record_skipped_step(ok_scale, state, 0), Contains("step must be 1-based"));
}

TEST_CASE("the step guard names a skip no step read: stop at the next reading step, skip_step counts it",
          "[train][nonfinite][errors]") {
  // What a GPU run goes through when a non-finite gradient norm falls on a step that reads
  // nothing: the device skips it (NaN clip scale) and the record says so at the next reading step.
  Tensor nan_scale = Tensor::from_vector(std::vector<float>{k_nan}, {1}, DType::f32);
  Tensor ok_scale = Tensor::from_vector(std::vector<float>{1.0f}, {1}, DType::f32);
  TrainConfig t;
  t.max_skipped_steps = 2;
  for (const char* policy : {"stop", "skip_step"}) {
    INFO(policy);
    t.nonfinite = policy;
    StepGuard guard(t, Device::cpu());
    for (int64_t step = 1; step <= 5; ++step) guard.record(step == 2 ? nan_scale : ok_scale, step);
    if (t.nonfinite == "stop") {
      REQUIRE_THROWS_WITH(guard.check(5, 3),
                          Contains("gradient norm is not finite at step 2 (rank 3): training diverged") &&
                              Contains("train.nonfinite = \"stop\"; found at step 5, the update of step 2 was not "
                                       "applied"));
      continue;
    }
    SkipRecord r = guard.check(5, 3);
    REQUIRE(r.skipped == 1);
    REQUIRE(r.first == 2);
    REQUIRE(r.last == 2);
    REQUIRE(r.consecutive == 0);
    guard.record(nan_scale, 6);
    guard.record(nan_scale, 7);  // a second skip in a row reaches max_skipped_steps = 2
    REQUIRE_THROWS_WITH(guard.check(7, 3), Contains("2 consecutive steps skipped (the last at step 7, "
                                                    "train.max_skipped_steps = 2) (rank 3)"));
  }
}

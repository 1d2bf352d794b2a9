// Checkpoints are never committed corrupt: a failed write (a real one, past RLIMIT_FSIZE) leaves
// "latest" at the previous checkpoint; diverged weights are never saved or evaluated as a number.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "parallel/communicator.h"
#include "src/train/checkpoint.h"
#include "src/train/trainer.h"
#include "tests/train/train_test_util.h"

using namespace moe;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// Files of this process cannot grow past max_bytes while it lives: write() fails with EFBIG as
// it fails with ENOSPC on a full disk (SIGXFSZ ignored, as a full disk sends no signal).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t max_bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = max_bytes;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  sighandler_t old_handler_;
};

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST_CASE("a checkpoint whose write fails is not committed and latest keeps the previous one",
          "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-fail");
  Config c = test::tiny_train_config(dir);
  c.train.steps = 1;
  auto world = make_world_communicator(Device::cpu());
  {
    Trainer trainer(c, 0, *world);
    trainer.train();
  }
  const std::string root = c.train.run_dir + "/checkpoints";
  const std::string step_1 = root + "/step_1", step_2 = root + "/step_2";
  REQUIRE(resolve_checkpoint(c.train.run_dir, "latest") == step_1);

  SECTION("config.toml cannot be written (the small files were the 0-byte ones)") {
    // Tensors small enough for the limit: the safetensors files and trainer_state.json fit, the
    // resolved config.toml does not.
    CheckpointTensors tiny;
    tiny.weights.emplace_back("w", Tensor::from_vector(std::vector<float>{1, 2}, {2}, DType::f32));
    tiny.moments.emplace_back("w.exp_avg", Tensor::from_vector(std::vector<float>{0, 0}, {2}, DType::f32));
    const rlim_t limit = 600;
    REQUIRE(to_toml(c).size() > limit);
    FileSizeLimit full(limit);
    REQUIRE_THROWS_WITH(write_checkpoint_tensors(step_2, tiny, {2, c.train.seed, 1}, c),
                        Contains("cannot write") && Contains("step_2.tmp-") && Contains("config.toml") &&
                            Contains("File too large"));
  }
  SECTION("model.safetensors cannot be written, from the trainer") {
    c.train.steps = 2;
    c.train.resume = "latest";
    Trainer trainer(c, 0, *world);
    FileSizeLimit full(fs::file_size(step_1 + "/model.safetensors") / 2);
    REQUIRE_THROWS_WITH(trainer.train(), Contains("cannot write") && Contains("model.safetensors"));
  }
  REQUIRE(resolve_checkpoint(c.train.run_dir, "latest") == step_1);
  REQUIRE(names_in(root) == std::vector<std::string>{"step_1"});  // no staging directory left behind
}

TEST_CASE("a staged checkpoint is verified before it is committed", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-verify");
  const std::string staged = dir.str("staged");
  fs::create_directories(staged);
  std::ofstream(staged + "/trainer_state.json") << "{\"step\": 7}\n";
  std::ofstream(staged + "/config.toml").close();  // 0 bytes, as on a full disk
  const uint64_t state_bytes = fs::file_size(staged + "/trainer_state.json");
  REQUIRE_NOTHROW(verify_staged_checkpoint(staged, {{"trainer_state.json", state_bytes}}, 7));
  REQUIRE_THROWS_WITH(verify_staged_checkpoint(staged, {{"config.toml", 1200}}, 7),
                      Contains(staged + "/config.toml has 0 bytes after writing, 1200 were written") &&
                          Contains("not committed"));
  REQUIRE_THROWS_WITH(verify_staged_checkpoint(staged, {{"model.safetensors", 10}}, 7),
                      Contains(staged + "/model.safetensors is missing after writing"));
  REQUIRE_THROWS_WITH(verify_staged_checkpoint(staged, {}, 8),
                      Contains("trainer_state.json does not read back as the trainer state of step 8"));
  std::ofstream(staged + "/trainer_state.json") << "{\"step\": 7";  // cut short
  REQUIRE_THROWS_WITH(verify_staged_checkpoint(staged, {}, 7), Contains("does not read back"));
}

TEST_CASE("a huge learning rate stops training and saves no checkpoint", "[train][errors]") {
  test::TempDir dir("moe-ckpt-huge-lr");
  Config c = test::tiny_train_config(dir);
  c.train.steps = 1;  // the case: one step, then the final save
  c.optim.lr = 1e30;  // the value: huge but finite weights whose loss is NaN
  auto world = make_world_communicator(Device::cpu());
  SECTION("the final evaluation finds it") {
    Trainer trainer(c, 0, *world);
    REQUIRE_THROWS_WITH(trainer.train(), Contains("validation loss is") && Contains("weights have diverged"));
  }
  SECTION("without validation data the save refuses the weights") {
    c.data.val_path.clear();
    c.optim.lr = 1e39;  // beyond f32: the update makes the weights infinite
    Trainer trainer(c, 0, *world);
    REQUIRE_THROWS_WITH(trainer.train(), Contains("not saving checkpoint " + c.train.run_dir + "/checkpoints/step_1"));
  }
  REQUIRE(!fs::exists(c.train.run_dir + "/checkpoints/step_1"));
}

TEST_CASE("non-finite weights are never saved", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-nan");
  Config c = test::tiny_train_config(dir);
  CheckpointTensors t;
  t.weights.emplace_back("w", Tensor::from_vector(std::vector<float>{1, std::numeric_limits<float>::infinity()}, {2},
                                                  DType::f32));
  REQUIRE_THROWS_WITH(write_checkpoint_tensors(dir.str("step_3"), t, {3, 0, 1}, c),
                      Contains("not saving checkpoint " + dir.str("step_3") + ": 'w' holds inf (element 1) at step 3"));
  t.weights.clear();
  t.moments.emplace_back("w.exp_avg_sq", Tensor::from_vector(std::vector<double>{std::nan("")}, {1}, DType::f64));
  REQUIRE_THROWS_WITH(write_checkpoint_tensors(dir.str("step_3"), t, {3, 0, 1}, c),
                      Contains("'w.exp_avg_sq' holds nan"));
  REQUIRE(!fs::exists(dir.str("step_3")));
}

TEST_CASE("evaluating diverged weights is an error, not a null loss", "[train][errors]") {
  test::TempDir dir("moe-ckpt-eval-nan");
  Config c = test::tiny_train_config(dir);
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  ParamStore& params = trainer.model().params();
  params.master(params.find("layers.0.attn.wq")).data_as<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(trainer.evaluate(2), Contains("validation loss is nan on " + c.data.val_path) &&
                                               Contains("weights have diverged"));
}

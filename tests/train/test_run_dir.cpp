// Run-directory policy as functions: cleanup of what killed saves left, the fresh-run refusal
// and overwrite, the resume comparison of configs (refused and allowed keys, the global batch),
// the resume step check, metrics cut back after a resume, and keep-last-k pruning.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/io/atomic_dir.h"
#include "src/train/checkpoint.h"
#include "src/train/run_dir.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A checkpoint directory as far as the run-dir checks read it: trainer_state.json, config.toml.
void fake_checkpoint(const std::string& dir, int64_t step, int64_t world_size, const Config& config) {
  fs::create_directories(dir);
  write_file_atomically(dir + "/trainer_state.json", "{\"step\": " + std::to_string(step) +
                                                         ", \"seed\": 1, \"world_size\": " +
                                                         std::to_string(world_size) + "}\n");
  write_file_atomically(dir + "/config.toml", to_toml(config));
}

std::vector<std::string> keys(const std::vector<ConfigChange>& changes) {
  std::vector<std::string> out;
  for (const ConfigChange& c : changes) out.push_back(c.key);
  return out;
}

TEST_CASE("staging left by killed saves is removed; an only copy is restored", "[train][run_dir]") {
  test::TempDir dir("moe-run-dir-staging");
  const std::string run = dir.str("run"), root = run + "/checkpoints";
  for (const char* name :
       {"step_1", "step_2", "step_3.tmp-11", "step_2.old-12", "step_4.old-13", "step_5.deleting-14"}) {
    fs::create_directories(root + "/" + name);
  }
  std::ofstream(root + "/step_4.old-13/model.safetensors") << "x";
  std::ofstream(run + "/config.toml.tmp-15") << "x";
  std::ofstream(run + "/config.toml") << "x";
  auto done = remove_abandoned_staging(run);
  REQUIRE(done.size() == 5);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(root)) left.push_back(entry.path().filename().string());
  std::sort(left.begin(), left.end());
  REQUIRE(left == std::vector<std::string>{"step_1", "step_2", "step_4"});
  REQUIRE(fs::exists(root + "/step_4/model.safetensors"));  // the old version was the only copy
  REQUIRE(!fs::exists(run + "/config.toml.tmp-15"));
  REQUIRE(fs::exists(run + "/config.toml"));
}

TEST_CASE("a fresh run over an old one is refused unless train.overwrite", "[train][run_dir]") {
  test::TempDir dir("moe-run-dir-fresh");
  const std::string run = dir.str("run");
  fs::create_directories(run);
  std::ofstream(run + "/config.toml") << "x";  // a run killed before its first log: nothing to lose
  std::ofstream(run + "/metrics.jsonl").close();
  REQUIRE_NOTHROW(check_fresh_run_dir(run, false));
  std::ofstream(run + "/metrics.jsonl") << "{\"step\": 1}\n";
  REQUIRE_THROWS_WITH(check_fresh_run_dir(run, false),
                      Contains("train.run_dir = " + run + " already holds a run (metrics.jsonl): resume it with "
                               "train.resume=latest, or set train.overwrite=true"));
  fs::create_directories(run + "/checkpoints/step_3");
  fs::create_directories(run + "/checkpoints/step_12");
  REQUIRE_THROWS_WITH(check_fresh_run_dir(run, false), Contains("(checkpoints up to step_12 and metrics.jsonl)"));
  REQUIRE_NOTHROW(check_fresh_run_dir(run, true));
  REQUIRE(list_checkpoints(run).empty());
  REQUIRE(!fs::exists(run + "/metrics.jsonl"));
  REQUIRE(fs::exists(run + "/config.toml"));
  REQUIRE_NOTHROW(check_fresh_run_dir(run, false));
}

TEST_CASE("resume refuses changes to the model and the data order and allows the safe keys", "[train][run_dir]") {
  Config saved;
  Config now = saved;
  now.train.steps = 500;
  now.train.log_every = 5;
  now.train.resume = "latest";
  now.optim.lr = 1e-4;
  now.parallel.zero = 1;
  now.data.val_path = "other_val.tok";
  ResumeChanges ok = resume_changes(saved, 16, now, 16);
  REQUIRE(ok.refused.empty());
  REQUIRE(keys(ok.allowed) == std::vector<std::string>{"train.steps", "train.log_every", "train.resume", "optim.lr",
                                                       "data.val_path", "parallel.zero"});
  REQUIRE(ok.allowed[0].before == "100");
  REQUIRE(ok.allowed[0].after == "500");

  now.model.num_layers = 1;
  now.moe.router = "hash";
  now.moe.top_k = 1;
  now.train.seed = 7;
  now.data.train_path = "other.tok";
  now.model.seq_len = 32;
  ResumeChanges bad = resume_changes(saved, 16, now, 32);
  REQUIRE(keys(bad.refused) == std::vector<std::string>{"model.num_layers", "model.seq_len", "moe.top_k", "moe.router",
                                                        "train.seed", "data.train_path",
                                                        "the global batch (sequences per step: "
                                                        "train.micro_batch_size x train.grad_accum x data-parallel "
                                                        "ranks)"});
  REQUIRE(bad.refused.back().before == "16");
  REQUIRE(bad.refused.back().after == "32");
  REQUIRE(bad.refused[3].after == "\"hash\"");
  REQUIRE(is_resume_safe_key("train.keep_last"));
  REQUIRE(is_resume_safe_key("schedule.kind"));
  REQUIRE(!is_resume_safe_key("moe.aux_loss_coef"));
  REQUIRE(!is_resume_safe_key("model.d_model"));
  // The datasets: validation may change, what training reads and how it samples may not; nor may
  // the document options (they change what the model computes).
  REQUIRE(is_resume_safe_key("data.val"));
  for (const char* key : {"data.train", "data.sampling", "model.reset_positions", "model.reset_attention",
                          "model.eos_id"}) {
    INFO(key);
    REQUIRE(!is_resume_safe_key(key));
  }
}

TEST_CASE("check_resume reads the checkpoint's config and step", "[train][run_dir]") {
  test::TempDir dir("moe-run-dir-resume");
  Config saved;
  saved.train.micro_batch_size = 4;
  saved.train.grad_accum = 2;
  const std::string ckpt = dir.str("step_40");
  fake_checkpoint(ckpt, 40, 2, saved);  // 2 data-parallel ranks x 4 x 2 = 16 sequences per step
  Config now = saved;
  now.train.micro_batch_size = 8;  // one rank taking the same 16 sequences
  now.train.steps = 80;
  REQUIRE(check_resume(ckpt, now, 16) == 40);
  REQUIRE_THROWS_WITH(check_resume(ckpt, now, 8), Contains("the global batch") && Contains(") 16 -> 8"));
  now.train.steps = 40;
  REQUIRE_THROWS_WITH(check_resume(ckpt, now, 16), Contains("cannot resume from " + ckpt + ": it is at step 40 and "
                                                            "train.steps = 40, so nothing is left to train"));
  now.train.steps = 80;
  now.model.d_model = 256;
  now.moe.num_experts = 8;
  REQUIRE_THROWS_WITH(check_resume(ckpt, now, 16),
                      Contains("cannot resume from " + ckpt + ": the config changes the model or the data order: "
                               "model.d_model 128 -> 256, moe.num_experts 0 -> 8; keep them as in " + ckpt +
                               "/config.toml"));
  // A step-0 checkpoint (moe upcycle, world_size 1) has drawn no batch: any layout may take it.
  const std::string upcycled = dir.str("upcycled");
  fake_checkpoint(upcycled, 0, 1, saved);
  now.model.d_model = saved.model.d_model;
  now.moe.num_experts = 0;
  REQUIRE(check_resume(upcycled, now, 64) == 0);
  fs::remove(upcycled + "/config.toml");
  REQUIRE_THROWS_WITH(check_resume(upcycled, now, 64), Contains(upcycled + "/config.toml"));
}

TEST_CASE("metrics after the resumed step and torn lines are dropped", "[train][run_dir]") {
  test::TempDir dir("moe-run-dir-metrics");
  const std::string path = dir.str("metrics.jsonl");
  REQUIRE(truncate_metrics(path, 3) == 0);  // no file yet
  const std::string kept = "{\"loss\":2.0,\"step\":1}\n{\"loss\":1.9,\"step\":2}\n{\"step\":2,\"val_loss\":2.1}\n"
                           "{\"loss\":1.8,\"step\":3}\n";
  std::ofstream(path) << kept << "{\"loss\":1.7,\"step\":4}\n{\"step\":4,\"val_loss\":1.9}\n{\"loss\":1.6,\"st";
  REQUIRE(truncate_metrics(path, 3) == 3);
  REQUIRE(read_text(path) == kept);
  REQUIRE(truncate_metrics(path, 3) == 0);  // nothing to drop: untouched
  REQUIRE(read_text(path) == kept);
  REQUIRE(truncate_metrics(path, 1) == 3);
  REQUIRE(read_text(path) == "{\"loss\":2.0,\"step\":1}\n");
}

TEST_CASE("keep_last removes the older checkpoints, never the newest or the one just saved", "[train][run_dir]") {
  test::TempDir dir("moe-run-dir-prune");
  const std::string run = dir.str("run");
  for (int step : {10, 20, 30, 40, 50}) fs::create_directories(run + "/checkpoints/step_" + std::to_string(step));
  REQUIRE(prune_checkpoints(run, 0, run + "/checkpoints/step_50").empty());  // 0 keeps all
  REQUIRE(list_checkpoints(run).size() == 5);
  auto removed = prune_checkpoints(run, 3, run + "/checkpoints/step_50");
  REQUIRE(removed == std::vector<std::string>{run + "/checkpoints/step_10", run + "/checkpoints/step_20"});
  // A run resumed from an older checkpoint just saved step_35: it stays, and so does the newest.
  fs::create_directories(run + "/checkpoints/step_35");
  removed = prune_checkpoints(run, 1, run + "/checkpoints/step_35");
  REQUIRE(removed == std::vector<std::string>{run + "/checkpoints/step_30", run + "/checkpoints/step_40"});
  auto left = list_checkpoints(run);
  REQUIRE(left.size() == 2);
  REQUIRE(left[0].first == 35);
  REQUIRE(left[1].first == 50);
  REQUIRE(resolve_checkpoint(run, "latest") == run + "/checkpoints/step_50");
}

TEST_CASE("a checkpoint must hold exactly the model's tensors and moments", "[train][checkpoint]") {
  test::TempDir dir("moe-run-dir-names");
  const std::string ckpt = dir.str("ckpt");
  CheckpointTensors tensors;
  for (const char* name : {"a", "b", "c"}) {
    tensors.weights.emplace_back(name, Tensor::zeros({2}, DType::f32));
    tensors.moments.emplace_back(std::string(name) + ".exp_avg", Tensor::zeros({2}, DType::f32));
    tensors.moments.emplace_back(std::string(name) + ".exp_avg_sq", Tensor::zeros({2}, DType::f32));
  }
  tensors.moments.pop_back();  // c.exp_avg_sq
  write_checkpoint_tensors(ckpt, tensors, TrainerState{1, 1, 1}, Config{});
  CheckpointFiles weights_only = read_checkpoint_files(ckpt, false);
  REQUIRE_NOTHROW(weights_only.check_names({"a", "b", "c"}));
  REQUIRE_THROWS_WITH(weights_only.check_names({"a", "b"}),
                      Contains("checkpoint " + ckpt + " does not match the model: 1 tensor(s) the model does not "
                               "have ('c'); was it saved from another model shape"));
  REQUIRE_THROWS_WITH(weights_only.check_names({"a", "b", "c", "d"}), Contains(": 1 tensor(s) missing ('d')"));
  CheckpointFiles all = read_checkpoint_files(ckpt, true);
  REQUIRE_THROWS_WITH(all.check_names({"a", "b", "c"}), Contains("1 tensor(s) missing ('c.exp_avg_sq')"));
  REQUIRE_THROWS_WITH(all.check_names({"a", "b", "x"}),
                      Contains("3 tensor(s) missing ('x', 'x.exp_avg', 'x.exp_avg_sq'); 2 tensor(s) the model does "
                               "not have ('c', 'c.exp_avg')"));
}

}  // namespace
}  // namespace moe

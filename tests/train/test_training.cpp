// Training loop on the CPU: loss goes down, save/resume continues bit-identically, the balancing
// statistics and the expert bias follow the step, the grouped experts train as the loop does, and bad
// input fails with a message naming the problem.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <string>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"
#include "src/ops/ops.h"
#include "src/train/checkpoint.h"
#include "src/train/trainer.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<double> step_losses(const std::vector<nlohmann::json>& metrics) {
  std::vector<double> out;
  for (const auto& m : metrics) {
    if (m.contains("loss")) out.push_back(m["loss"].get<double>());
  }
  return out;
}

std::vector<float> all_master_values(Model& model) {
  std::vector<float> out;
  for (int g = 0; g < k_num_param_groups; ++g) {
    auto v = model.params().flat_master(static_cast<ParamGroup>(g)).to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace

TEST_CASE("training lowers the loss and writes metrics, evaluations and a checkpoint", "[train]") {
  test::TempDir dir("moe-train-basic");
  Config c = test::tiny_train_config(dir);
  c.train.steps = 30;
  c.train.eval_every = 10;
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  trainer.train();
  auto metrics = read_metrics(c.train.run_dir + "/metrics.jsonl");
  auto losses = step_losses(metrics);
  REQUIRE(losses.size() == 30);
  // The mean of the last 5 steps: one step's loss is that of 32 tokens, too noisy to compare alone
  // (the last step of this seed reads a hard batch: 3.10, where steps 25-29 average 2.88).
  double last5 = 0;
  for (size_t i = 25; i < 30; ++i) last5 += losses[i] / 5;
  REQUIRE(last5 < losses.front() - 0.5);
  int evals = 0;
  for (const auto& m : metrics) {
    if (m.contains("val_loss")) ++evals;
    if (m.contains("loss")) {
      REQUIRE(m.contains("lr"));
      REQUIRE(m.contains("tokens_per_s"));
      REQUIRE(m["moe"].size() == 1);  // one MoE layer, with its expert load
      REQUIRE(m["moe"][0]["tokens_per_expert"].size() == 4);
    }
  }
  REQUIRE(evals == 3);
  REQUIRE(std::filesystem::exists(c.train.run_dir + "/checkpoints/step_30/model.safetensors"));
  REQUIRE(resolve_checkpoint(c.train.run_dir, "latest") == c.train.run_dir + "/checkpoints/step_30");
}

TEST_CASE("a resumed run continues bit-identically", "[train][checkpoint]") {
  test::TempDir dir("moe-train-resume");
  Config c = test::tiny_train_config(dir);
  c.train.grad_accum = 2;
  c.train.save_every = 3;
  auto world = make_world_communicator(Device::cpu());
  std::vector<double> full_losses;
  std::vector<float> full_params;
  {
    Trainer trainer(c, 0, *world);
    trainer.train();
    full_losses = step_losses(read_metrics(c.train.run_dir + "/metrics.jsonl"));
    full_params = all_master_values(trainer.model());
  }
  REQUIRE(full_losses.size() == 6);

  Config resumed = c;
  resumed.train.run_dir = dir.str("run2");
  resumed.train.resume = c.train.run_dir + "/checkpoints/step_3";
  Trainer trainer(resumed, 0, *world);
  trainer.train();
  auto losses = step_losses(read_metrics(resumed.train.run_dir + "/metrics.jsonl"));
  REQUIRE(losses.size() == 3);
  for (size_t i = 0; i < 3; ++i) REQUIRE(losses[i] == full_losses[i + 3]);  // exact, not approximate
  REQUIRE(all_master_values(trainer.model()) == full_params);
}

TEST_CASE("the grouped experts' first-write gradients train as the loop's zeroed ones over micro-batches",
          "[train][experts]") {
  // The grouped experts' weight gradients are stored by the step's first micro-batch and added by
  // the second (ParamStore::mark_first_write_grad); the loop's are zeroed and added to. In f64 the two
  // runs match to rounding, step after step, weights included.
  test::TempDir dir("moe-train-first-write");
  Config c = test::tiny_train_config(dir);
  c.train.grad_accum = 2;
  c.train.steps = 4;
  c.train.dtype = "f64";
  auto world = make_world_communicator(Device::cpu());
  std::map<std::string, std::vector<double>> losses, weights;
  for (const std::string impl : {"loop", "grouped"}) {
    Config k = c;
    k.moe.experts_impl = impl;
    k.train.run_dir = dir.str("run_" + impl);
    Trainer trainer(k, 0, *world);
    trainer.train();
    losses[impl] = step_losses(read_metrics(k.train.run_dir + "/metrics.jsonl"));
    for (int g = 0; g < k_num_param_groups; ++g) {
      auto v = trainer.model().params().flat_master(static_cast<ParamGroup>(g)).to_vector<double>();
      weights[impl].insert(weights[impl].end(), v.begin(), v.end());
    }
  }
  REQUIRE(losses["loop"].size() == 4);
  test::require_close(losses["grouped"], losses["loop"], 1e-12, 1e-10, "losses");
  test::require_close(weights["grouped"], weights["loop"], 1e-12, 1e-10, "weights");
}

TEST_CASE("train.init_from starts a fresh run from another run's weights", "[train][checkpoint]") {
  test::TempDir dir("moe-train-init-from");
  Config c = test::tiny_train_config(dir);
  c.train.steps = 3;
  auto world = make_world_communicator(Device::cpu());
  std::vector<float> source_params;
  {
    Trainer source(c, 0, *world);
    source.train();
    source_params = all_master_values(source.model());
  }
  // At a learning rate of 1e-30 a step leaves the weights where they start (within 1e-20), so the
  // run's final weights show where it started.
  Config tuned = c;
  tuned.train.run_dir = dir.str("tuned");
  tuned.train.steps = 2;
  tuned.optim.lr = 1e-30;
  tuned.optim.min_lr = 0;
  auto max_difference = [&](const Config& config) {
    Trainer trainer(config, 0, *world);
    trainer.train();
    std::vector<float> params = all_master_values(trainer.model());
    REQUIRE(params.size() == source_params.size());
    double most = 0;
    for (size_t i = 0; i < params.size(); ++i) most = std::max(most, std::abs(double(params[i]) - source_params[i]));
    return most;
  };
  REQUIRE(max_difference(tuned) > 1e-3);  // without init_from: the run's own initial weights
  tuned.train.overwrite = true;
  for (const std::string& from : {c.train.run_dir, c.train.run_dir + "/checkpoints/step_3"}) {
    INFO("init_from " << from);
    tuned.train.init_from = from;  // a run directory (its newest checkpoint) or a checkpoint
    REQUIRE(max_difference(tuned) < 1e-20);
    // A fresh run: steps 1 and 2 of its own, checkpointed in its own directory.
    auto records = read_metrics(tuned.train.run_dir + "/metrics.jsonl");
    REQUIRE(step_losses(records).size() == 2);
    REQUIRE(std::filesystem::is_directory(tuned.train.run_dir + "/checkpoints/step_2"));
    auto first = std::find_if(records.begin(), records.end(), [](const auto& r) { return r.contains("loss"); });
    REQUIRE((*first)["step"] == 1);
    // The source read 3 steps of 4 sequences; this run starts at the first again, and says so.
    const std::string log = read_text(tuned.train.run_dir + "/train.log");
    REQUIRE_THAT(log, Contains("train.init_from: the source read 12 training samples and this run starts at sample 0 "
                               "(data.skip_batches = 0 x 4 per step): it reads part of the source's data again; "
                               "data.skip_batches = 3 continues where the source stopped"));
  }
  tuned.train.init_from = c.train.run_dir;
  tuned.data.skip_batches = 3;
  REQUIRE(max_difference(tuned) < 1e-20);
  REQUIRE_THAT(read_text(tuned.train.run_dir + "/train.log"),
               Contains("train.init_from: the run reads the data after the source's 12 samples (data.skip_batches = 3)"));
  tuned.data.skip_batches = 0;
  // A mistyped source fails before train.overwrite clears the run directory.
  tuned.train.init_from = dir.str("missing");
  REQUIRE_THROWS_WITH(Trainer(tuned, 0, *world).train(),
                      Catch::Matchers::Contains("train.init_from = \"" + dir.str("missing") + "\" is not a directory"));
  REQUIRE(std::filesystem::is_directory(tuned.train.run_dir + "/checkpoints/step_2"));
  // A source inside the run directory would be cleared before it is read.
  for (const std::string& inside : {tuned.train.run_dir, tuned.train.run_dir + "/checkpoints/step_2"}) {
    tuned.train.init_from = inside;
    REQUIRE_THROWS_WITH(Trainer(tuned, 0, *world).train(),
                        Catch::Matchers::Contains("lies inside train.run_dir") &&
                            Catch::Matchers::Contains("which a fresh run clears"));
    REQUIRE(std::filesystem::is_directory(tuned.train.run_dir + "/checkpoints/step_2"));
  }
  std::filesystem::create_directories(dir.str("empty_run/checkpoints"));
  tuned.train.init_from = dir.str("empty_run");
  REQUIRE_THROWS_WITH(Trainer(tuned, 0, *world).train(),
                      Catch::Matchers::Contains("is a run directory without a step_<N> checkpoint"));
}

TEST_CASE("data.skip_batches: step s reads the batch s + skip_batches of the sample order", "[train][data]") {
  test::TempDir dir("moe-train-skip-batches");
  Config c = test::tiny_train_config(dir);
  // At a learning rate of 1e-30 the weights stay where they start, so a step's loss shows its batch.
  c.optim.lr = 1e-30;
  c.optim.min_lr = 0;
  c.train.eval_every = 0;
  auto world = make_world_communicator(Device::cpu());
  auto losses = [&](const Config& config) {
    Trainer trainer(config, 0, *world);
    trainer.train();
    return step_losses(read_metrics(config.train.run_dir + "/metrics.jsonl"));
  };
  const std::vector<double> all = losses(c);
  REQUIRE(all.size() == 6);
  Config skipped = c;
  skipped.train.run_dir = dir.str("skipped");
  skipped.train.steps = 3;
  skipped.data.skip_batches = 3;
  const std::vector<double> later = losses(skipped);
  REQUIRE(later.size() == 3);
  for (size_t i = 0; i < 3; ++i) REQUIRE(later[i] == Approx(all[i + 3]).epsilon(1e-6));
  REQUIRE(later[0] != Approx(all[0]).epsilon(1e-6));  // not the first batch again
  skipped.data.skip_batches = -1;
  REQUIRE_THROWS_WITH(validate_config(skipped), Contains("data.skip_batches = -1 must be at least 0"));
}

TEST_CASE("global_batch Switch under capacity dropping counts the slots moe.aux_count names",
          "[train][balance][aux_count]") {
  // One micro-batch on one rank: the global batch is that micro-batch, so the trainer's pooled
  // Switch term must equal the layer's own, for either count; and the two counts differ.
  test::TempDir dir("moe-train-aux-count");
  auto world = make_world_communicator(Device::cpu());
  Config c = test::tiny_train_config(dir);
  c.moe.capacity_factor = 0.5;
  c.moe.aux_loss_coef = 0.1;
  std::map<std::string, double> aux;
  for (const std::string count : {"routed", "kept"}) {
    for (const std::string scope : {"micro_batch", "global_batch"}) {
      Config v = c;
      v.moe.aux_count = count;
      v.moe.balance_scope = scope;
      v.train.run_dir = dir.str("run-" + count + "-" + scope);
      Trainer trainer(v, 0, *world);
      StepResult r = trainer.train_step();
      INFO(count << " " << scope);
      REQUIRE(r.routing.size() == 1);
      REQUIRE(r.routing[0].dropped > 0);
      REQUIRE(r.aux_loss > 0);
      aux[count + " " + scope] = r.aux_loss;
    }
  }
  CHECK(aux.at("routed global_batch") == Approx(aux.at("routed micro_batch")).epsilon(1e-12));
  CHECK(aux.at("kept global_batch") == Approx(aux.at("kept micro_batch")).epsilon(1e-12));
  CHECK(std::abs(aux.at("routed micro_batch") - aux.at("kept micro_batch")) > 1e-6);
}

TEST_CASE("global_batch Switch over identical micro-batches gives the micro-batch term and gradient",
          "[train][balance][global_batch]") {
  // Every window of a one-token shard is the same, so both micro-batches of a step route alike:
  // the global batch's f_i and P_i are each micro-batch's, and pooling must give the same value
  // and the same gradient as the mean of the micro-batch terms (a pooled row scaled by anything
  // but micro-batches x ranks, or over the wrong token count, does not).
  test::TempDir dir("moe-train-global-identical");
  auto world = make_world_communicator(Device::cpu());
  Config c = test::tiny_train_config(dir);
  data::write_token_shard(dir.str("same.tok"), std::vector<uint32_t>(4000, 5), data::TokenDType::u16);
  c.data.train_path = dir.str("same.tok");
  c.train.grad_accum = 2;
  c.moe.aux_loss_coef = 1.0;  // large: the Switch part of the router's gradient is not small
  std::map<std::string, std::vector<double>> grads;
  std::map<std::string, double> aux;
  for (const std::string scope : {"micro_batch", "global_batch"}) {
    Config v = c;
    v.moe.balance_scope = scope;
    v.train.run_dir = dir.str("run-" + scope);
    validate_config(v);
    Trainer trainer(v, 0, *world);
    trainer.set_before_update_hook([&](int64_t, ParamStore& store) {
      grads[scope] = store.flat_grads(ParamGroup::dense).to_vector<double>();
    });
    aux[scope] = trainer.train_step().aux_loss;
  }
  REQUIRE(aux.at("micro_batch") > 0);
  CHECK(aux.at("global_batch") == Approx(aux.at("micro_batch")).epsilon(1e-9));
  test::require_close(grads.at("global_batch"), grads.at("micro_batch"), 1e-9, 1e-6, "dense gradients");
}

TEST_CASE("aux-loss-free bias: each step moves it by its loads (counted on the device); a skipped step moves none",
          "[train][balance][bias]") {
  test::TempDir dir("moe-train-bias");
  auto world = make_world_communicator(Device::cpu());
  Config c = test::tiny_train_config(dir);
  c.moe.router = "sigmoid";
  c.moe.expert_bias_rate = 0.01;
  c.train.grad_accum = 2;
  c.train.nonfinite = "skip_step";
  validate_config(c);
  Trainer trainer(c, 0, *world);
  // Step 3's gradient is poisoned: its update, and so its bias update, is skipped.
  trainer.set_before_update_hook([](int64_t step, ParamStore& store) {
    if (step == 3) store.flat_grads(ParamGroup::dense).data_as<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  });
  std::vector<double> bias(static_cast<size_t>(c.moe.num_experts), 0.0);
  double moved = 0;
  for (int step = 1; step <= 5; ++step) {
    INFO("step " << step);
    const StepResult r = trainer.train_step();
    REQUIRE(r.routing.size() == 1);
    const LayerRoutingStats& s = r.routing[0];
    // The loads are the step's kept slots per expert over both micro-batches (the host statistics).
    REQUIRE(std::accumulate(s.tokens_per_expert.begin(), s.tokens_per_expert.end(), int64_t{0}) ==
            2 * c.train.micro_batch_size * c.model.seq_len * c.moe.top_k);
    REQUIRE(r.skipped == (step == 3));
    if (!r.skipped) update_expert_bias(bias, s.tokens_per_expert, c.moe.expert_bias_rate);
    test::require_close(s.bias, bias, 1e-7, 0, "bias after the step");
    moved = std::max(moved, test::max_abs(bias));
  }
  // The bias moved at some step (+-rate steps can also bring it back to exactly 0 by step 5).
  REQUIRE(moved > 0);
}

TEST_CASE("a NaN loss stops training with a message naming the step", "[train][errors]") {
  test::TempDir dir("moe-train-nan");
  Config c = test::tiny_train_config(dir);
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  ParamStore& params = trainer.model().params();
  Tensor w = params.master(params.find("layers.0.attn.wq"));
  w.data_as<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(trainer.train(), Contains("loss is nan at step 1"));
}

TEST_CASE("data with ids beyond the model vocabulary is rejected when opened", "[train][errors]") {
  test::TempDir dir("moe-train-vocab");
  Config c = test::tiny_train_config(dir, 32);
  c.model.vocab_size = 16;  // the shard holds ids up to 31: a tokenizer larger than the model
  auto world = make_world_communicator(Device::cpu());
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world),
                      Contains("data.train_path " + c.data.train_path + ": token id ") &&
                          Contains("is outside the vocabulary (model.vocab_size = 16)"));
}

TEST_CASE("one bad id late in a data file is found when the file is opened", "[train][errors]") {
  test::TempDir dir("moe-train-late-id");
  Config c = test::tiny_train_config(dir, 32);
  auto world = make_world_communicator(Device::cpu());
  for (const char* key : {"data.train_path", "data.val_path"}) {
    const std::string path = dir.str(std::string(key) + ".tok");
    std::vector<uint32_t> tokens(3000, 5);
    tokens[2990] = 32;  // one id past the vocabulary, near the end
    data::write_token_shard(path, tokens, data::TokenDType::u16);
    Config v = c;
    (std::string(key) == "data.train_path" ? v.data.train_path : v.data.val_path) = path;
    INFO(key);
    REQUIRE_THROWS_WITH(Trainer(v, 0, *world),
                        Contains(std::string(key) + " " + path + ": token id 32 at position 2990 is outside the "
                                 "vocabulary (model.vocab_size = 32)"));
  }
}

TEST_CASE("a validation file shorter than one evaluation window is rejected when opened", "[train][errors]") {
  test::TempDir dir("moe-train-short-val");
  Config c = test::tiny_train_config(dir);  // seq_len 8: a window is 9 tokens
  test::write_pattern_shard(dir.str("short_val.tok"), 8, 32, 3);
  c.data.val_path = dir.str("short_val.tok");
  auto world = make_world_communicator(Device::cpu());
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world),
                      Contains("data.val_path " + c.data.val_path + ": has 8 tokens, fewer than seq_len + 1 = 9"));
  test::write_pattern_shard(dir.str("short_val.tok"), 9, 32, 3);  // exactly one window
  REQUIRE_NOTHROW(Trainer(c, 0, *world));
}

TEST_CASE("a missing data file is named", "[train][errors]") {
  test::TempDir dir("moe-train-missing");
  Config c = test::tiny_train_config(dir);
  c.data.train_path = dir.str("nope.tok");
  auto world = make_world_communicator(Device::cpu());
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world), Contains("nope.tok"));
}

TEST_CASE("data shorter than one sequence is rejected", "[train][errors]") {
  test::TempDir dir("moe-train-short");
  Config c = test::tiny_train_config(dir);
  test::write_pattern_shard(dir.str("short.tok"), 5, 32, 3);
  c.data.train_path = dir.str("short.tok");
  auto world = make_world_communicator(Device::cpu());
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world), Contains("short.tok"));
}

TEST_CASE("truncated and corrupt checkpoints are rejected with a clear message", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-train-corrupt");
  Config c = test::tiny_train_config(dir);
  c.train.steps = 1;
  auto world = make_world_communicator(Device::cpu());
  {
    Trainer trainer(c, 0, *world);
    trainer.train();
  }
  std::string ckpt = c.train.run_dir + "/checkpoints/step_1";
  std::string weights = ckpt + "/model.safetensors";
  auto size = std::filesystem::file_size(weights);

  SECTION("truncated") {
    std::filesystem::resize_file(weights, size / 2);
    Trainer trainer(c, 0, *world);
    REQUIRE_THROWS_WITH(trainer.load_checkpoint(ckpt, true), Contains("checkpoint truncated"));
  }
  SECTION("corrupt header") {
    std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("#####", 5);
    f.close();
    Trainer trainer(c, 0, *world);
    REQUIRE_THROWS_WITH(trainer.load_checkpoint(ckpt, true), Contains("corrupt checkpoint"));
  }
  SECTION("another model's checkpoint") {
    Config other = c;
    other.model.d_model = 32;
    Trainer trainer(other, 0, *world);
    REQUIRE_THROWS_WITH(trainer.load_checkpoint(ckpt, true), Contains("but the model expects"));
  }
  SECTION("a checkpoint of more layers (its extra tensors were ignored)") {
    Config fewer = c;
    fewer.model.num_layers = 1;
    fewer.moe.first_dense = 0;
    Trainer trainer(fewer, 0, *world);
    REQUIRE_THROWS_WITH(trainer.load_checkpoint(ckpt, true),
                        Contains("checkpoint " + ckpt + " does not match the model: ") &&
                            Contains("tensor(s) missing ('layers.0.moe.") &&
                            Contains("tensor(s) the model does not have ('layers.0.ffn.") &&
                            Contains("'layers.1.attn.wk'"));
    REQUIRE_THROWS_WITH(trainer.load_checkpoint(ckpt, false), Contains("does not match the model"));
  }
  SECTION("a checkpoint of fewer layers") {
    Config more = c;
    more.model.num_layers = 3;
    Trainer trainer(more, 0, *world);
    REQUIRE_THROWS_WITH(trainer.load_checkpoint(ckpt, false),
                        Contains("tensor(s) missing ('layers.2.attn.wk'") && !Contains("does not have"));
  }
  SECTION("latest without checkpoints") {
    REQUIRE_THROWS_WITH(resolve_checkpoint(dir.str("empty-run"), "latest"), Contains("does not exist"));
  }
}

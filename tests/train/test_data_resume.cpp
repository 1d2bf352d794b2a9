// Training on blended, multi-shard data: a resumed run continues the sample order exactly, its
// checkpoints record the data, a resume over changed shards is refused naming the change, and
// evaluation reads every window of every validation shard.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"
#include "src/train/checkpoint.h"
#include "src/train/data_state.h"
#include "src/train/trainer.h"
#include "tests/train/train_test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

std::vector<double> step_losses(const std::string& metrics_path) {
  std::vector<double> out;
  std::ifstream in(metrics_path);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json m = nlohmann::json::parse(line);
    if (m.contains("loss")) out.push_back(m["loss"].get<double>());
  }
  return out;
}

// Two training datasets (web: two shards by a glob; code: one) blended 3:1, two validation shards.
Config blended_config(const test::TempDir& dir) {
  Config c = test::tiny_train_config(dir);
  test::write_pattern_shard(dir.str("web_000.tok"), 1500, 32, 11);
  test::write_pattern_shard(dir.str("web_001.tok"), 700, 32, 12);
  test::write_pattern_shard(dir.str("code.tok"), 900, 32, 13);
  test::write_pattern_shard(dir.str("v0.tok"), 300, 32, 14);
  test::write_pattern_shard(dir.str("v1.tok"), 200, 32, 15);
  c.data.train_path = "";
  c.data.val_path = "";
  c.data.train = {DataSource{{dir.str("web_*.tok")}, 0.75}, DataSource{{dir.str("code.tok")}, 0.25}};
  c.data.val = {DataSource{{dir.str("v0.tok"), dir.str("v1.tok")}, 1.0}};
  c.train.grad_accum = 2;
  c.train.save_every = 3;
  validate_config(c);
  return c;
}

nlohmann::json read_state(const std::string& checkpoint) {
  std::ifstream in(checkpoint + "/trainer_state.json");
  return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("a blended multi-shard run resumes bit-identically and records its data", "[train][data][checkpoint]") {
  test::TempDir dir("moe-train-blend-resume");
  const Config c = blended_config(dir);
  auto world = make_world_communicator(Device::cpu());
  std::vector<double> full;
  {
    Trainer trainer(c, 0, *world);
    trainer.train();
    full = step_losses(c.train.run_dir + "/metrics.jsonl");
  }
  REQUIRE(full.size() == 6);
  const std::string step3 = c.train.run_dir + "/checkpoints/step_3";
  const nlohmann::json data = read_state(step3)["data"];
  CHECK(data["sampling"] == "epochs");
  CHECK(data["consumed_samples"] == 3 * 8);  // 3 steps of 4 x 2 sequences
  CHECK(data["seq_len"] == 8);
  REQUIRE(data["datasets"].size() == 2);
  CHECK(data["datasets"][0]["key"] == "data.train[0]");
  CHECK(data["datasets"][0]["weight"] == 0.75);
  REQUIRE(data["datasets"][0]["shards"].size() == 2);
  CHECK(data["datasets"][0]["shards"][1]["path"] == dir.str("web_001.tok"));
  CHECK(data["datasets"][0]["shards"][1]["tokens"] == 700);
  // 18 of 24 samples from web's (1499 + 699) / 8 windows.
  CHECK(data["datasets"][0]["epochs"].get<double>() == Approx(18.0 / (187 + 87)));

  Config resumed = c;
  resumed.train.run_dir = dir.str("run2");
  resumed.train.resume = step3;
  {
    Trainer trainer(resumed, 0, *world);
    trainer.train();
  }
  const std::vector<double> losses = step_losses(resumed.train.run_dir + "/metrics.jsonl");
  REQUIRE(losses.size() == 3);
  for (size_t i = 0; i < 3; ++i) REQUIRE(losses[i] == full[i + 3]);  // exact: the same samples, in order

  // A shard that changed, or one more shard matching the glob, would change the order: refused.
  resumed.train.run_dir = dir.str("run3");
  test::write_pattern_shard(dir.str("web_001.tok"), 650, 32, 12);
  REQUIRE_THROWS_WITH(Trainer(resumed, 0, *world).train(),
                      Contains("cannot resume from " + step3 + ": data.train[0] shard 1 " + dir.str("web_001.tok") +
                               " has 650 tokens, its run read 700 (" + dir.str("web_001.tok") +
                               "): the sample order would change"));
  test::write_pattern_shard(dir.str("web_001.tok"), 700, 32, 12);
  test::write_pattern_shard(dir.str("web_002.tok"), 300, 32, 16);
  REQUIRE_THROWS_WITH(Trainer(resumed, 0, *world).train(),
                      Contains("data.train[0] now has 3 shards (") && Contains("its run read 2 ("));
}

TEST_CASE("a checkpoint without a data state resumes only under random windows", "[train][data][checkpoint]") {
  const nlohmann::json epochs = {{"sampling", "epochs"}, {"datasets", nlohmann::json::array()}};
  const nlohmann::json windows = {{"sampling", "random_windows"}, {"datasets", nlohmann::json::array()}};
  REQUIRE_THROWS_WITH(check_resume_data(nullptr, epochs, "runs/old/checkpoints/step_40", 40),
                      Contains("cannot resume from runs/old/checkpoints/step_40: it records no data state, so its run "
                               "drew random windows") &&
                          Contains("resume it with data.sampling = \"random_windows\""));
  REQUIRE_NOTHROW(check_resume_data(nullptr, windows, "old", 40));
  REQUIRE_NOTHROW(check_resume_data(nullptr, epochs, "upcycled", 0));  // step 0: no batch drawn yet
  REQUIRE_THROWS_WITH(check_resume_data(windows, epochs, "ckpt", 5),
                      Contains("its run sampled by 'random_windows', data.sampling is now 'epochs'"));
}

TEST_CASE("random windows read one shard; evaluation reads every validation shard", "[train][data]") {
  test::TempDir dir("moe-train-blend-eval");
  Config c = blended_config(dir);
  auto world = make_world_communicator(Device::cpu());
  Trainer trainer(c, 0, *world);
  // v0: (300 - 1) / 8 = 37 windows, v1: 24; all of them, 8 targets each.
  CHECK(trainer.evaluate(0).tokens == (37 + 24) * 8);

  c.data.sampling = "random_windows";
  c.data.train = {DataSource{{dir.str("web_*.tok")}, 1.0}};
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world),
                      Contains("data.sampling = 'random_windows' draws from one shard, but data.train[0] expands to 2 "
                               "shards"));
  c.data.train = {DataSource{{dir.str("code.tok")}, 1.0}};
  REQUIRE_NOTHROW(Trainer(c, 0, *world));
}

TEST_CASE("bad training data is named by its dataset when the run opens it", "[train][data][errors]") {
  test::TempDir dir("moe-train-blend-bad");
  Config c = blended_config(dir);
  auto world = make_world_communicator(Device::cpu());
  std::vector<uint32_t> tokens(400, 3);
  tokens[123] = 40;  // beyond model.vocab_size = 32
  data::write_token_shard(dir.str("web_001.tok"), tokens, data::TokenDType::u16);
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world), Contains("data.train[0] " + dir.str("web_001.tok") +
                                                      ": token id 40 at position 123 is outside the vocabulary"));
  test::write_pattern_shard(dir.str("web_001.tok"), 700, 32, 12);
  test::write_pattern_shard(dir.str("code.tok"), 8, 32, 13);  // no window of seq_len + 1 = 9
  REQUIRE_THROWS_WITH(Trainer(c, 0, *world),
                      Contains("data.train[1] " + dir.str("code.tok") + ": has 8 tokens, fewer than seq_len + 1 = 9"));
}

// trainer_state.json read back from a checkpoint: a missing field, a field of the wrong JSON type
// or out of range, a state that is not an object, and a FIFO in its place each fail with one
// line naming the file and the fault.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>

#include "src/train/checkpoint.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

// A one-tensor checkpoint at dir/"ckpt" whose trainer_state.json is then replaced by `state`,
// without its checksums.json (as written before checksums), so the fields themselves are checked.
std::string checkpoint_with_state(const test::TempDir& dir, const std::string& state) {
  std::string ckpt = dir.str("ckpt");
  CheckpointTensors tensors;
  tensors.weights.emplace_back("w", test::random_tensor({4}, DType::f32, 3));
  write_checkpoint_tensors(ckpt, tensors, TrainerState{7, 11, 1}, Config{});
  std::ofstream(ckpt + "/trainer_state.json") << state;
  std::filesystem::remove(ckpt + "/checksums.json");
  return ckpt;
}

TEST_CASE("a well-formed trainer_state.json is read back", "[train][checkpoint]") {
  test::TempDir dir("moe-checkpoint-state-good");
  std::string ckpt = checkpoint_with_state(dir, R"({"step": 5, "seed": 9, "world_size": 2})");
  TrainerState state = read_checkpoint_files(ckpt, false).state;
  REQUIRE(state.step == 5);
  REQUIRE(state.seed == 9);
  REQUIRE(state.world_size == 2);
}

TEST_CASE("a bad trainer_state.json names the file and the field", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-checkpoint-state-bad");
  auto require_error = [&](const std::string& state, const std::string& problem) {
    std::string ckpt = checkpoint_with_state(dir, state);
    std::string path = ckpt + "/trainer_state.json";
    INFO("state: " << state);
    REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false),
                        Contains("corrupt checkpoint " + path + ": " + problem) && !Contains("json.exception"));
  };
  require_error(R"({"step": "five", "seed": 1, "world_size": 1})", "field \"step\" is a JSON string, expected an integer");
  require_error(R"({"step": 2.5, "seed": 1, "world_size": 1})", "field \"step\" is a JSON number, expected an integer");
  require_error(R"({"step": 5, "seed": -1, "world_size": 1})",
                "field \"seed\" is a JSON number, expected a non-negative integer");
  require_error(R"({"step": 5, "seed": 1, "world_size": [1]})",
                "field \"world_size\" is a JSON array, expected an integer");
  require_error("[1, 2]", "not a JSON object but a JSON array");
}

TEST_CASE("a trainer_state.json with missing fields or absurd values is refused", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-checkpoint-state-range");
  auto require_error = [&](const std::string& state, const std::string& problem) {
    std::string ckpt = checkpoint_with_state(dir, state);
    INFO("state: " << state);
    REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false),
                        Contains("corrupt checkpoint " + ckpt + "/trainer_state.json: " + problem));
  };
  // `{}` restarted at step 0 and overwrote the run's checkpoints.
  require_error("{}", "field \"step\" is missing");
  require_error(R"({"step": 5, "world_size": 1})", "field \"seed\" is missing");
  require_error(R"({"step": 5, "seed": 1})", "field \"world_size\" is missing");
  require_error(R"({"step": -3, "seed": 1, "world_size": 1})",
                "field \"step\" = -3 is out of range [0, 9007199254740992]");
  require_error(R"({"step": 9007199254740993, "seed": 1, "world_size": 1})", "field \"step\" = 9007199254740993");
  require_error(R"({"step": 9223372036854775807, "seed": 1, "world_size": 1})",  // 2^63 - 1
                "field \"step\" = 9223372036854775807 is out of range");
  require_error(R"({"step": 18446744073709551615, "seed": 1, "world_size": 1})",  // would wrap to -1
                "field \"step\" = 18446744073709551615 is out of range");
  require_error(R"({"step": 5, "seed": 9223372036854775808, "world_size": 1})", "field \"seed\" = 9223372036854775808");
  require_error(R"({"step": 5, "seed": 1, "world_size": 0})", "field \"world_size\" = 0 is out of range [1, ");
  // The edges are accepted.
  std::string ckpt = checkpoint_with_state(dir, R"({"step": 9007199254740992, "seed": 0, "world_size": 1})");
  REQUIRE(read_checkpoint_files(ckpt, false).state.step == (int64_t{1} << 53));
}

TEST_CASE("a FIFO as trainer_state.json is refused before it is opened", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-checkpoint-state-fifo");
  std::string ckpt = checkpoint_with_state(dir, "{}");
  std::string path = ckpt + "/trainer_state.json";
  std::filesystem::remove(path);
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false),
                      Contains(path + ": cannot open checkpoint state (not a regular file)"));
}

}  // namespace
}  // namespace moe

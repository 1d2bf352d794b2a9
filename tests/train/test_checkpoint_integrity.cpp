// Checkpoint integrity on load: checksums.json records each file's size and CRC-32C as written;
// flipped bytes, edits and size changes are refused naming the file (unless verification is off),
// and tensors whose dtype was relabelled are refused naming the tensor and the file.
#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "src/io/checksum_manifest.h"
#include "src/train/checkpoint.h"
#include "src/util/crc32c.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// A two-tensor checkpoint (weights and moments) at dir/"ckpt".
std::string small_checkpoint(const test::TempDir& dir) {
  const std::string ckpt = dir.str("ckpt");
  CheckpointTensors tensors;
  tensors.weights.emplace_back("w", Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}, DType::f32));
  tensors.moments.emplace_back("w.exp_avg", test::random_tensor({2, 2}, DType::f32, 5));
  tensors.moments.emplace_back("w.exp_avg_sq", test::random_tensor({2, 2}, DType::f32, 6));
  write_checkpoint_tensors(ckpt, tensors, TrainerState{3, 11, 1}, Config{});
  return ckpt;
}

// Flips one bit of the last byte of a file: inside the data of its last tensor for safetensors.
void flip_last_byte(const std::string& path) {
  std::string bytes = read_bytes(path);
  bytes.back() = static_cast<char>(bytes.back() ^ 0x01);
  write_bytes(path, bytes);
}

ParamInfo info_of(const std::string& name, const Shape& shape) {
  ParamInfo info;
  info.name = name;
  info.shape = shape;
  return info;
}

TEST_CASE("checksums.json records every file's size and CRC-32C as written", "[train][checkpoint]") {
  test::TempDir dir("moe-ckpt-integrity-manifest");
  const std::string ckpt = small_checkpoint(dir);
  std::optional<ChecksumManifest> manifest = read_checksum_manifest(ckpt);
  REQUIRE(manifest.has_value());
  REQUIRE(manifest->size() == 4);
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.toml"}) {
    INFO(file);
    REQUIRE(manifest->count(file) == 1);
    const std::string bytes = read_bytes(ckpt + "/" + file);
    CHECK(manifest->at(file).num_bytes == bytes.size());
    CHECK(manifest->at(file).crc32c == crc32c(bytes.data(), bytes.size()));
  }
  CheckpointFiles files = read_checkpoint_files(ckpt, true);
  CHECK(files.state.step == 3);
  CHECK(files.weights.copy(files.weights.entry("w")).to_vector<float>() == std::vector<float>{1, 2, 3, 4});
}

TEST_CASE("flipped bytes in tensor data are refused naming the file", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-integrity-flip");
  const std::string ckpt = small_checkpoint(dir);
  const std::string model = ckpt + "/model.safetensors";
  flip_last_byte(model);
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false),
                      Contains("checkpoint file " + model + " fails its checksum: CRC-32C ") &&
                          Contains("train.verify_checkpoints = false"));
  // With verification off the same bytes load (the size still matches): the check is what refused them.
  CheckpointFiles unchecked = read_checkpoint_files(ckpt, false, false);
  CHECK(unchecked.weights.copy(unchecked.weights.entry("w")).to_vector<float>() != std::vector<float>{1, 2, 3, 4});

  const std::string moments = ckpt + "/optimizer.safetensors";
  flip_last_byte(model);  // restored
  REQUIRE_NOTHROW(read_checkpoint_files(ckpt, true));
  flip_last_byte(moments);
  REQUIRE_NOTHROW(read_checkpoint_files(ckpt, false));  // the moments are not read
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, true),
                      Contains("checkpoint file " + moments + " fails its checksum"));
}

TEST_CASE("an edited or resized checkpoint file is refused naming it", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-integrity-edit");
  const std::string ckpt = small_checkpoint(dir);
  const std::string state = ckpt + "/trainer_state.json";
  std::string text = read_bytes(state);
  const size_t at = text.find("\"step\": 3");
  REQUIRE(at != std::string::npos);
  text[at + 8] = '9';  // the same size, another step
  write_bytes(state, text);
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false), Contains("checkpoint file " + state + " fails its checksum"));
  REQUIRE(read_checkpoint_files(ckpt, false, false).state.step == 9);
  write_bytes(state, text + "\n");  // one byte more: refused even without the CRC
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false, false),
                      Contains("checkpoint file " + state + " has ") && Contains(" records ") &&
                          Contains("changed or truncated after the save"));
}

TEST_CASE("a checkpoint without checksums.json loads; a malformed one is refused", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-integrity-nomanifest");
  const std::string ckpt = small_checkpoint(dir);
  const std::string manifest = ckpt + "/checksums.json";
  write_bytes(manifest, "{\"algorithm\": \"md5\", \"files\": {}}");
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false), Contains("corrupt checkpoint " + manifest));
  write_bytes(manifest, "{\"algorithm\": \"crc32c\", \"files\": {\"model.safetensors\": {\"bytes\": 1, \"crc32c\": \"XYZ\"}}}");
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false),
                      Contains("corrupt checkpoint " + manifest + ": the entry of 'model.safetensors'"));
  write_bytes(manifest, "{\"algorithm\": \"crc32c\", \"files\": {}}");
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false),
                      Contains("checkpoint file " + ckpt + "/model.safetensors has no entry in checksums.json"));
  fs::remove(manifest);  // a checkpoint from before checksums: loaded (with a warning)
  REQUIRE(read_checkpoint_files(ckpt, true).state.step == 3);
}

TEST_CASE("an F32 tensor relabelled I32 is refused naming the tensor and the file", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-integrity-dtype");
  const std::string ckpt = small_checkpoint(dir);
  const std::string model = ckpt + "/model.safetensors";
  std::string bytes = read_bytes(model);
  const size_t at = bytes.find("\"F32\"");
  REQUIRE(at != std::string::npos);
  bytes.replace(at, 5, "\"I32\"");  // same size: the header still parses and the offsets still tile
  write_bytes(model, bytes);
  CheckpointFiles files = read_checkpoint_files(ckpt, false, false);
  REQUIRE_THROWS_WITH(files.take(info_of("w", {2, 2}), "w", false),
                      Contains("checkpoint " + model + ": 'w' has dtype i32 but the model expects floating-point"));
  // With verification on, the relabelling is already caught by the checksum.
  REQUIRE_THROWS_WITH(read_checkpoint_files(ckpt, false), Contains(model + " fails its checksum"));
}

TEST_CASE("a tensor of the wrong shape is refused naming the tensor and the file", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-integrity-shape");
  const std::string ckpt = small_checkpoint(dir);
  CheckpointFiles files = read_checkpoint_files(ckpt, true);
  REQUIRE_THROWS_WITH(files.take(info_of("w", {4, 1}), "w", false),
                      Contains("checkpoint " + ckpt + "/model.safetensors: 'w' has shape [2,2] but the model expects [4,1]"));
  REQUIRE(files.take(info_of("w", {2, 2}), "w.exp_avg", true).numel() == 4);  // the right shape loads
}

}  // namespace
}  // namespace moe

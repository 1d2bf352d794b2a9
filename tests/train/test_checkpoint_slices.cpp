// Each rank's part of a checkpoint read through the mapping: a row shard (expert parallelism)
// copies only its rows and equals those rows of the whole tensor; column shards and whole tensors
// equal local_part of the whole tensor; weights and moments alike, verified or not.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "src/train/checkpoint.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

ParamInfo row_shard(const std::string& name, const Shape& full_shape, int64_t row_offset, int64_t rows) {
  ParamInfo info;
  info.name = name;
  info.full_shape = full_shape;
  info.shape = full_shape;
  info.shape[0] = rows;
  info.row_offset = row_offset;
  info.split_over = SplitOver::ep;
  return info;
}

ParamInfo col_shard(const std::string& name, const Shape& full_shape, int64_t col_offset, int64_t cols) {
  ParamInfo info;
  info.name = name;
  info.full_shape = full_shape;
  info.shape = full_shape;
  info.shape.back() = cols;
  info.col_blocks = 1;
  info.col_offset = col_offset;
  info.split_over = SplitOver::tp;
  return info;
}

// Expert weights [8,3,5] in each master dtype, a dense [4,6] and their AdamW moments.
CheckpointTensors sliced_checkpoint() {
  CheckpointTensors t;
  uint64_t seed = 1;
  auto add = [&](const std::string& name, const Shape& shape, DType dtype) {
    t.weights.emplace_back(name, test::random_tensor(shape, dtype, seed++));
    t.moments.emplace_back(name + ".exp_avg", test::random_tensor(shape, dtype, seed++));
    t.moments.emplace_back(name + ".exp_avg_sq", test::random_tensor(shape, dtype, seed++, Device::cpu(), 0.0, 1.0));
  };
  add("experts.w32", {8, 3, 5}, DType::f32);
  add("experts.w64", {8, 3, 5}, DType::f64);
  add("experts.wbf16", {8, 3, 5}, DType::bf16);
  add("dense", {4, 6}, DType::f32);
  return t;
}

TEST_CASE("a row-shard take equals those rows of the whole tensor, weights and moments", "[train][checkpoint]") {
  test::TempDir dir("moe-ckpt-slices");
  const std::string ckpt = dir.str("ckpt");
  const CheckpointTensors tensors = sliced_checkpoint();
  write_checkpoint_tensors(ckpt, tensors, TrainerState{2, 7, 4}, Config{});
  const SafetensorsFile whole_weights = read_safetensors(ckpt + "/model.safetensors");
  const SafetensorsFile whole_moments = read_safetensors(ckpt + "/optimizer.safetensors");
  for (bool verify : {true, false}) {
    const CheckpointFiles files = read_checkpoint_files(ckpt, true, verify);
    for (const char* name : {"experts.w32", "experts.w64", "experts.wbf16"}) {
      for (int64_t num_ranks : {1, 2, 4, 8}) {
        const int64_t rows = 8 / num_ranks;
        for (int64_t rank = 0; rank < num_ranks; ++rank) {
          INFO(name << " rank " << rank << " of " << num_ranks << (verify ? " verified" : ""));
          const ParamInfo info = row_shard(name, {8, 3, 5}, rank * rows, rows);
          const Tensor& full = whole_weights.tensors.at(name);
          REQUIRE(same_bytes(files.take(info, name, false), full.rows(rank * rows, (rank + 1) * rows)));
          REQUIRE(same_bytes(files.take(info, name, false), local_part(info, full)));
          for (const std::string moment : {".exp_avg", ".exp_avg_sq"}) {
            const Tensor& m = whole_moments.tensors.at(name + moment);
            REQUIRE(same_bytes(files.take(info, name + moment, true), m.rows(rank * rows, (rank + 1) * rows)));
          }
        }
      }
    }
    // Column shards (tensor parallelism) and unsplit parameters: local_part of the whole tensor.
    const Tensor& dense = whole_weights.tensors.at("dense");
    for (int64_t rank = 0; rank < 3; ++rank) {
      const ParamInfo info = col_shard("dense", {4, 6}, rank * 2, 2);
      REQUIRE(same_bytes(files.take(info, "dense", false), local_part(info, dense)));
    }
    ParamInfo whole;
    whole.name = "dense";
    whole.shape = {4, 6};
    REQUIRE(same_bytes(files.take(whole, "dense", false), dense));
    REQUIRE(same_bytes(files.take(whole, "dense.exp_avg_sq", true), whole_moments.tensors.at("dense.exp_avg_sq")));
  }
}

TEST_CASE("a row shard's whole shape is checked before any row is read", "[train][checkpoint][errors]") {
  test::TempDir dir("moe-ckpt-slices-bad");
  const std::string ckpt = dir.str("ckpt");
  write_checkpoint_tensors(ckpt, sliced_checkpoint(), TrainerState{2, 7, 4}, Config{});
  const CheckpointFiles files = read_checkpoint_files(ckpt, false);
  const std::string model = ckpt + "/model.safetensors";
  // A layout with 16 experts asks rows 8..16 of a checkpoint with 8.
  REQUIRE_THROWS_WITH(files.take(row_shard("experts.w32", {16, 3, 5}, 8, 8), "experts.w32", false),
                      Contains("checkpoint " + model + ": 'experts.w32' has shape [8,3,5] but the model expects [16,3,5]"));
  REQUIRE_THROWS_WITH(files.take(row_shard("experts.w9", {8, 3, 5}, 0, 4), "experts.w9", false),
                      Contains("checkpoint " + model + " has no tensor 'experts.w9'"));
  // Moments were not opened: asking for one names the optimizer file.
  REQUIRE_THROWS_WITH(files.take(row_shard("experts.w32", {8, 3, 5}, 0, 4), "experts.w32.exp_avg", true),
                      Contains("checkpoint " + ckpt + "/optimizer.safetensors has no tensor 'experts.w32.exp_avg'"));
}

}  // namespace
}  // namespace moe

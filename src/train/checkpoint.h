// Checkpoints: checkpoints/step_<N>/ holds model.safetensors (master weights by canonical
// name), optimizer.safetensors (AdamW moments), trainer_state.json, the resolved config.toml
// and checksums.json (each file's size and CRC-32C); the directory is written atomically.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/nn/param_store.h"
#include "src/train/optimizer.h"
#include "src/io/safetensors.h"

namespace moe {

struct TrainerState {
  int64_t step = 0;        // completed optimizer steps; the data position is derived from it
  uint64_t seed = 0;
  int64_t world_size = 1;  // the layout it was saved from (informational)
  // The training data as the sampler saw it (an object, trainer_data_state in src/train/
  // data_state.h), null when none was recorded (checkpoints of `moe upcycle`, and those written
  // before data.sampling existed, whose "data" was a sentence).
  nlohmann::json data;
};

// Full (canonical) host tensors by name: weights and AdamW moments ("<name>.exp_avg",
// "<name>.exp_avg_sq").
struct CheckpointTensors {
  std::vector<std::pair<std::string, Tensor>> weights, moments;
};
// Refuses (throws naming dir and the tensor) a weight or moment holding NaN or Inf, before
// anything is written; stages every file with checked writes and verifies the staged files
// (verify_staged_checkpoint) before the rename that commits dir, so a failed save leaves
// "latest" at the previous checkpoint.
void write_checkpoint_tensors(const std::string& dir, const CheckpointTensors& tensors, const TrainerState& state,
                              const Config& config);
// Throws "not saving checkpoint <dir>: '<name>' holds nan ..." unless every f32/f64 value is finite.
void check_finite_for_save(const std::string& dir, const std::string& name, const Tensor& t, int64_t step);
// Each (file, bytes written) under a staged checkpoint dir exists with exactly that size (and
// more than 0 bytes), safetensors headers parse, trainer_state.json parses with this step;
// otherwise throws naming the file.
void verify_staged_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, uint64_t>>& sizes,
                              int64_t step);
// One process's whole state (no sharding): the store's master weights and the AdamW moments.
void write_checkpoint(const std::string& dir, const ParamStore& params, const AdamW& optimizer,
                      const TrainerState& state, const Config& config);

// The files of a checkpoint directory, validated and memory-mapped: a rank copies out only the
// tensors and rows it holds (any layout can take what it needs), so the rest is never read.
struct CheckpointFiles {
  MappedSafetensors weights, moments;  // moments not open unless asked for
  TrainerState state;
  std::string dir;
  // The canonical tensor `name` (from moments when from_moments), its dtype and whole shape
  // checked against info; of a row shard (expert parallelism) only rows [row_offset, row_offset +
  // shape[0]) are read; a column shard (tensor parallelism) reads the whole tensor and cuts it.
  Tensor take(const ParamInfo& info, const std::string& name, bool from_moments) const;
  // Throws unless the weights hold exactly `names` (the whole model's canonical names) and, when
  // moments were read, the moments exactly their ".exp_avg" and ".exp_avg_sq": a checkpoint of
  // more or fewer layers is refused, naming the missing and the extra tensors.
  void check_names(const std::set<std::string>& names) const;
};
// verify: each file's CRC-32C is compared with the checkpoint's checksums.json (sizes always are,
// where it has one); a mismatch throws naming the file (train.verify_checkpoints). The CRC reads
// each file whole, once and sequentially; without verify only what take() copies is read.
CheckpointFiles read_checkpoint_files(const std::string& dir, bool with_optimizer, bool verify = true);
// <dir>/trainer_state.json alone (its fields type-checked, errors naming the file).
TrainerState read_trainer_state(const std::string& dir, bool verify = true);
// Loads weights into params (every parameter present with its shape and a floating-point dtype, no
// other tensor); with an optimizer also its moments. Returns the trainer state.
TrainerState read_checkpoint(const std::string& dir, ParamStore& params, AdamW* optimizer, bool verify = true);
// The committed <run_dir>/checkpoints/step_<N> directories as (N, path), by step; none when absent.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir);
// "latest" -> the highest checkpoints/step_<N> under run_dir; anything else is a directory path.
std::string resolve_checkpoint(const std::string& run_dir, const std::string& resume);
// train.init_from: a checkpoint directory as is; a run directory (one with checkpoints/): its
// newest checkpoint. Refused inside run_dir (a fresh run clears it). An error names the key and
// the path.
std::string resolve_init_from(const std::string& path, const std::string& run_dir);

}  // namespace moe

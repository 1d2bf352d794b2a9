// Checkpoints: checkpoints/step_<N>/ holds model.safetensors (master weights by canonical
// name), optimizer.safetensors (AdamW moments), trainer_state.json and the resolved
// config.toml; the directory is written atomically (temp directory + rename).
#pragma once

#include <cstdint>
#include <string>

#include "src/config/config.h"
#include "src/model/param_store.h"
#include "src/train/optimizer.h"

namespace moe {

struct TrainerState {
  int64_t step = 0;        // completed optimizer steps; the data position is derived from it
  uint64_t seed = 0;
  int64_t world_size = 1;  // the layout it was saved from (informational)
};

void write_checkpoint(const std::string& dir, const ParamStore& params, const AdamW& optimizer,
                      const TrainerState& state, const Config& config);
// Loads weights into params (every parameter must be present with its shape); with an
// optimizer also its moments. Returns the trainer state.
TrainerState read_checkpoint(const std::string& dir, ParamStore& params, AdamW* optimizer);
// "latest" -> the highest checkpoints/step_<N> under run_dir; anything else is a directory path.
std::string resolve_checkpoint(const std::string& run_dir, const std::string& resume);

}  // namespace moe

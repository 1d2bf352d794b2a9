// `moe convert --from-hf`: a Hugging Face directory (config.json + safetensors, single or
// sharded) becomes an engine run directory (config.toml + checkpoints/step_0) that eval,
// generate and `train --resume` accept. docs/interop.md has the name map and the refusals.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "src/tensor/tensor.h"
#include "src/tools/hf_arch.h"
#include "src/tools/hf_tensors.h"
#include "src/tools/upcycle.h"

namespace moe {

// An HF model read into the engine's naming: canonical name -> f32 host tensor.
struct HfModel {
  HfModelSpec spec;
  nlohmann::json hf_config;  // config.json as read
  HfDType dtype = HfDType::f32;  // the stored dtype of its weights
  std::map<std::string, Tensor> weights;
};

// Reads config.json and the weights of hf_dir; every HF tensor must find its place (and the
// zero-only ones be zero), every engine parameter be present with its shape.
HfModel read_hf_model(const std::string& hf_dir, int64_t seq_len, const std::string& run_dir);

struct HfImportResult {
  HfModel model;
  std::string checkpoint_dir;  // <run_dir>/checkpoints/step_0
};

// Writes run_dir (which must not exist or be empty): config.toml (train.run_dir = run_dir,
// train.resume = "latest", then `overrides` "section.key=value" applied: the data, training and
// optimizer settings a later `moe train` resumes with), hf_config.json (the source config.json,
// which export reuses) and the step-0 checkpoint (zero AdamW moments). Overrides of [model] keys
// and of the [moe] keys that shape the parameters are refused by name (config.json sets them).
HfImportResult import_hf(const std::string& hf_dir, const std::string& run_dir, int64_t seq_len,
                         const std::vector<std::string>& overrides = {});

// `moe upcycle --from-hf`: the dense HF model of hf_dir upcycled into target (upcycle_from_weights).
// target's [model] must be the imported one (model.seq_len aside): a differing key is refused by name.
UpcycleResult upcycle_from_hf(const std::string& hf_dir, const Config& target, const std::string& out_dir,
                              const UpcycleOptions& options);

}  // namespace moe

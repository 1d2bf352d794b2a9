// `moe convert --to-hf`: an engine checkpoint (a run directory's latest, or a checkpoint
// directory) becomes a Hugging Face directory: config.json + model.safetensors.
#pragma once

#include <string>

#include "src/tools/hf_arch.h"
#include "src/tools/hf_tensors.h"

namespace moe {

struct HfExportOptions {
  std::string arch;   // "" = the imported config.json's model_type, else llama / mixtral / qwen2_moe by the run
  std::string dtype;  // "" = the imported config.json's dtype, else float32; or float32 | bfloat16 | float16
};

struct HfExportResult {
  HfFamily family = HfFamily::llama;
  HfDType dtype = HfDType::f32;
  std::string checkpoint_dir;
  size_t num_tensors = 0;
};

// from: a checkpoint directory (holding model.safetensors) or a run directory (its latest
// checkpoint; its hf_config.json, written by import, is the base of config.json). out_dir must
// not exist or be empty. Refuses what the target family cannot express, naming the engine key.
HfExportResult export_hf(const std::string& from, const std::string& out_dir, const HfExportOptions& options);

}  // namespace moe

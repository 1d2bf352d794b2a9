// `moe logits`: the logits of one token sequence under a checkpoint, as JSON, so that another
// implementation (transformers, experiments/interop/verify_hf.py) can be compared token by token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/model/model.h"

namespace moe {

// The model of checkpoint directory `ckpt` under its config c, built on the CPU (f32, or f64 with
// use_f64) with the checkpoint's weights loaded.
std::unique_ptr<Model> load_cpu_model(const std::string& ckpt, const Config& c, bool use_f64);

// from: a run directory (its latest checkpoint) or a checkpoint directory. tokens: 1 to
// model.seq_len ids below model.vocab_size (the rest of the window is padded with id 0, which a
// causal model's earlier positions never see). Runs on the CPU in f32 (f64 with use_f64).
// Returns {"checkpoint", "tokens", "vocab_size", "logits": [[V floats] per token]}.
nlohmann::json checkpoint_logits(const std::string& from, const std::vector<int32_t>& tokens, bool use_f64);

}  // namespace moe

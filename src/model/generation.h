// Autoregressive generation of a batch of prompts: KV-cached (prefill once, then one token per
// sequence per step) or the full-window reference path, with sampling, EOS and a per-token sink.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "src/model/model.h"
#include "src/model/sampling.h"

namespace moe {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  uint64_t seed = 1;       // sequence i samples with its own generator seeded seed + i
  bool use_cache = true;   // false: every step reruns the model on the last seq_len tokens
  int32_t eos_id = -1;     // ends a sequence (and is not part of its output); -1 = none
  int64_t vocab_limit = 0; // ids >= it are never drawn (a vocabulary padded past the tokenizer); 0 = all
};

enum class StopReason { length, eos, stop };
const char* stop_reason_name(StopReason reason);  // "length", "eos", "stop"

struct Generated {
  std::vector<int32_t> tokens;  // the new tokens only
  StopReason reason = StopReason::length;
};

// Prefill and decode time and tokens (moe bench generate). Prefill: the first step (all prompts);
// decode: the rest. Seconds are host wall time, the logits read back every step.
struct GenerationTiming {
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prefill_tokens = 0, decode_tokens = 0;
};

// Called with (sequence, token) as each new token is produced (never for EOS); returning false
// ends that sequence with StopReason::stop (a stop string), the token kept.
using TokenSink = std::function<bool(size_t sequence, int32_t token)>;

// prompts: B non-empty token lists -> one Generated per prompt. Prompts longer than seq_len keep
// their last seq_len tokens in view; once a sequence outgrows seq_len, it continues on the
// full-window path (the window slides, as the reference does). At temperature 0 both paths give
// the same tokens, and a batch the same tokens as each prompt alone (routers with capacity
// dropping excepted: they see other tokens). Throws naming what the model lacks for the cache.
std::vector<Generated> generate(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                const GenerationOptions& options, const TokenSink& sink = nullptr,
                                GenerationTiming* timing = nullptr);

}  // namespace moe

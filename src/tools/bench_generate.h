// `moe bench generate`: prefill and decode throughput of generation, with and without the KV cache.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "src/model/model.h"

namespace moe {

struct GenerateBenchOptions {
  int64_t batch = 1, prompt_len = 0, new_tokens = 0;  // 0: half of seq_len each (prompt, then new tokens)
  uint64_t seed = 1;                                   // the random prompt tokens
};

// After an untimed warm-up of both paths: greedy generation of `batch` random prompts of prompt_len tokens to new_tokens tokens each (no
// EOS), once with the cache and once without -> {"cached": {...}, "uncached": {...}} with, for each,
// prefill_s, decode_s, prefill_tokens_per_s (prompt tokens per second of the first step) and
// decode_tokens_per_s (new tokens after the first per second), plus "decode_speedup" (cached over
// uncached) and the resolved sizes. prompt_len + new_tokens must fit model.seq_len.
nlohmann::json bench_generate(const Model& model, GenerateBenchOptions options);

}  // namespace moe

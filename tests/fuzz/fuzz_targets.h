// Fuzz entry points over untrusted input: the TOML config loader, the safetensors reader, the
// token-shard reader and the Megatron .idx/.bin reader. libFuzzer drives them (MOE_FUZZ=ON,
// scripts/fuzz.sh); CTest replays the corpus.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moe::fuzz {

// Each takes arbitrary bytes. A clean moe::Error (a refusal with a message) is a pass; anything
// else (another exception, a failed round trip, a crash or a sanitizer report) is a finding.
void fuzz_config_toml(const uint8_t* data, size_t size);
void fuzz_safetensors(const uint8_t* data, size_t size);
void fuzz_token_shard(const uint8_t* data, size_t size);
// Input: [u16 n][n bytes: the .bin][the rest: the .idx], written as a pair and opened by prefix.
void fuzz_megatron_idx(const uint8_t* data, size_t size);

struct FuzzTarget {
  const char* name;  // also the corpus folder: tests/fuzz/corpus/<name>/
  void (*run)(const uint8_t*, size_t);
};
const std::vector<FuzzTarget>& fuzz_targets();

}  // namespace moe::fuzz

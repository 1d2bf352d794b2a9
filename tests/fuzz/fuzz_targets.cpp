// The fuzz entry points: readers that take a path get the bytes through a per-process scratch
// file; the config is parsed from memory and, when valid, must survive to_toml and back.
#include "tests/fuzz/fuzz_targets.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "src/config/config.h"
#include "src/data/batch_sampler.h"
#include "src/data/token_shard.h"
#include "src/io/safetensors.h"
#include "src/util/check.h"

namespace moe::fuzz {

namespace {

// One scratch file per process and target, rewritten for every input.
std::string scratch_file(const char* name, const uint8_t* data, size_t size) {
  static const std::filesystem::path dir = std::filesystem::temp_directory_path();
  const std::string path = (dir / ("moe-fuzz-" + std::to_string(::getpid()) + "-" + name)).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write scratch file %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// Runs body; a moe::Error is the expected way to refuse bad input.
template <typename Body>
void refusals_allowed(Body body) {
  try {
    body();
  } catch (const Error&) {
  }
}

}  // namespace

void fuzz_config_toml(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  refusals_allowed([&] {
    Config config = parse_config(text, "fuzz.toml");
    // A config that validates is written back and must read back identically.
    Config again = parse_config(to_toml(config), "fuzz.toml");
    if (!(again == config)) {
      std::fprintf(stderr, "fuzz: to_toml round trip changed the config\n");
      std::abort();
    }
  });
}

void fuzz_safetensors(const uint8_t* data, size_t size) {
  const std::string path = scratch_file("safetensors", data, size);
  refusals_allowed([&] {
    SafetensorsFile file = read_safetensors(path, true);
    if (file.digest.num_bytes != size) {  // header and tensors must tile the whole file
      std::fprintf(stderr, "fuzz: read %llu of %zu bytes\n", static_cast<unsigned long long>(file.digest.num_bytes),
                   size);
      std::abort();
    }
  });
}

void fuzz_token_shard(const uint8_t* data, size_t size) {
  const std::string path = scratch_file("shard", data, size);
  refusals_allowed([&] {
    data::TokenDataset shard = data::TokenDataset::open(path);
    std::vector<int32_t> ids(static_cast<size_t>(shard.size()));
    refusals_allowed([&] { shard.copy_tokens(0, shard.size(), ids.data()); });  // u32 ids past int32 refused
    refusals_allowed([&] { shard.check_ids_below(50000); });
    const int64_t seq_len = 3;
    if (shard.size() >= seq_len + 1) {
      refusals_allowed([&] {
        data::BatchSampler sampler(shard, 1, 2, seq_len);
        sampler.global(0);
        data::EvalIterator windows(shard, 2, seq_len);
        data::TokenWindows batch;
        while (windows.next(batch)) {
        }
      });
    }
  });
}

const std::vector<FuzzTarget>& fuzz_targets() {
  static const std::vector<FuzzTarget> targets = {
      {"config_toml", fuzz_config_toml}, {"safetensors", fuzz_safetensors}, {"token_shard", fuzz_token_shard}};
  return targets;
}

}  // namespace moe::fuzz

// The fuzz entry points: readers that take a path get the bytes through a per-process scratch
// file; the config is parsed from memory and, when valid, must survive to_toml and back.
#include "tests/fuzz/fuzz_targets.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "src/config/config.h"
#include "src/data/batch_sampler.h"
#include "src/data/indexed_dataset.h"
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

namespace {

// What the trainer does with an opened token file: every id read, checked against a vocabulary,
// training and evaluation windows drawn.
void read_like_the_trainer(const data::TokenDataset& shard) {
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
}

}  // namespace

void fuzz_token_shard(const uint8_t* data, size_t size) {
  const std::string path = scratch_file("shard", data, size);
  refusals_allowed([&] { read_like_the_trainer(data::TokenDataset::open(path)); });
}

void fuzz_megatron_idx(const uint8_t* data, size_t size) {
  // [u16 n][n bytes of .bin][the rest: the .idx]; n is cut to what the input holds.
  const size_t head = std::min<size_t>(size, 2);
  const size_t bin_size = size >= 2 ? std::min<size_t>(data[0] | (size_t{data[1]} << 8), size - 2) : 0;
  scratch_file("megatron.bin", data + head, bin_size);
  const std::string idx = scratch_file("megatron.idx", data + head + bin_size, size - head - bin_size);
  const std::string prefix = idx.substr(0, idx.size() - 4);
  refusals_allowed([&] {
    const data::MegatronIndex index = data::MegatronIndex::open(idx);
    int64_t tokens = 0;
    for (int64_t i = 0; i < index.num_sequences(); ++i) tokens += index.sequence_length(i);
    for (int64_t d = 0; d <= index.num_documents(); ++d) index.document_index(d);
    const data::TokenDataset shard = data::open_token_source(prefix);
    if (tokens != index.num_tokens() || shard.size() != tokens) {  // an accepted pair must agree with itself
      std::fprintf(stderr, "fuzz: index says %lld tokens, lengths add to %lld, the data file holds %lld\n",
                   static_cast<long long>(index.num_tokens()), static_cast<long long>(tokens),
                   static_cast<long long>(shard.size()));
      std::abort();
    }
    read_like_the_trainer(shard);
  });
}

const std::vector<FuzzTarget>& fuzz_targets() {
  static const std::vector<FuzzTarget> targets = {
      {"config_toml", fuzz_config_toml}, {"safetensors", fuzz_safetensors}, {"token_shard", fuzz_token_shard},
      {"megatron_idx", fuzz_megatron_idx}};
  return targets;
}

}  // namespace moe::fuzz

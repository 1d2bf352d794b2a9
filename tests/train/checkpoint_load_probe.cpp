// Measures what one expert-parallel rank reads to resume a large checkpoint (not a CTest test; the
// numbers are in docs/decisions.md): bytes read from disk, peak RSS, file pages left cached.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "src/io/checksum_manifest.h"
#include "src/train/checkpoint.h"

namespace moe {
namespace {

constexpr int64_t k_num_layers = 8, k_num_experts = 64, k_width = 512, k_expert_width = 768, k_dense_rows = 4096;
const char* const k_files[] = {"model.safetensors", "optimizer.safetensors"};

// The parameters of the synthetic model as one expert-parallel rank of ep sees them.
std::vector<ParamInfo> rank_params(int64_t ep, int64_t rank) {
  std::vector<ParamInfo> infos;
  for (int64_t l = 0; l < k_num_layers; ++l) {
    ParamInfo experts;
    experts.name = "layers." + std::to_string(l) + ".moe.experts.w_up";
    experts.full_shape = {k_num_experts, k_width, k_expert_width};
    experts.shape = {k_num_experts / ep, k_width, k_expert_width};
    experts.row_offset = rank * (k_num_experts / ep);
    ParamInfo dense;
    dense.name = "layers." + std::to_string(l) + ".attn.w_qkv";
    dense.shape = {k_dense_rows, k_width};
    infos.push_back(experts);
    infos.push_back(dense);
  }
  return infos;
}

void write_probe_checkpoint(const std::string& dir) {
  CheckpointTensors t;
  float value = 0;
  auto filled = [&](const Shape& shape) {
    Tensor x = Tensor::empty(shape, DType::f32);
    for (int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] = value += 1e-3f;
    return x;
  };
  for (const ParamInfo& p : rank_params(1, 0)) {
    t.weights.emplace_back(p.name, filled(p.shape));
    t.moments.emplace_back(p.name + ".exp_avg", filled(p.shape));
    t.moments.emplace_back(p.name + ".exp_avg_sq", filled(p.shape));
  }
  write_checkpoint_tensors(dir, t, TrainerState{1, 1, 1}, Config{});
}

// Evicts the files' clean pages from the page cache, so the next load reads from disk.
void evict(const std::string& dir) {
  for (const char* file : k_files) {
    const int fd = ::open((dir + "/" + file).c_str(), O_RDONLY);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Bytes of the files in the page cache (mincore of a fresh mapping).
double cached_mib(const std::string& dir) {
  uint64_t resident = 0;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  for (const char* file : k_files) {
    MappedFile mapped(dir + "/" + file, "checkpoint");
    std::vector<unsigned char> pages((mapped.size() + page - 1) / page);
    ::mincore(const_cast<unsigned char*>(mapped.data()), mapped.size(), pages.data());
    for (unsigned char p : pages) resident += (p & 1) * page;
  }
  return static_cast<double>(resident) / (1 << 20);
}

uint64_t read_bytes() {
  std::ifstream in("/proc/self/io");
  for (std::string key; in >> key;) {
    uint64_t value = 0;
    in >> value;
    if (key == "read_bytes:") return value;
  }
  return 0;
}

// mode: "whole" (every tensor copied, as the reader did before the mapping), "sliced" (take()).
void load(const std::string& dir, const std::string& mode, bool verify, int64_t ep, int64_t rank) {
  evict(dir);
  const double cached_before = cached_mib(dir);
  const uint64_t read_before = read_bytes();
  const auto start = std::chrono::steady_clock::now();
  double taken = 0;
  std::vector<Tensor> kept;  // what the rank keeps (its parameters and moments), held to the end as a trainer would
  if (mode == "whole") {
    const auto manifest = checkpoint_manifest(dir, verify);
    std::vector<SafetensorsFile> files;
    for (const char* file : k_files) files.push_back(read_verified_safetensors(dir, file, manifest, verify));
    for (const ParamInfo& p : rank_params(ep, rank)) {
      for (const char* suffix : {"", ".exp_avg", ".exp_avg_sq"}) {
        kept.push_back(local_part(p, files[*suffix ? 1 : 0].tensors.at(p.name + suffix)).clone());
        taken += kept.back().nbytes();
      }
    }
  } else {
    CheckpointFiles files = read_checkpoint_files(dir, true, verify);
    for (const ParamInfo& p : rank_params(ep, rank)) {
      for (const char* suffix : {"", ".exp_avg", ".exp_avg_sq"}) {
        kept.push_back(files.take(p, p.name + suffix, *suffix));
        taken += kept.back().nbytes();
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  std::printf("{\"mode\": \"%s\", \"verify\": %s, \"ep\": %lld, \"rank\": %lld, \"cached_before_mib\": %.1f, "
              "\"read_mib\": %.1f, \"cached_after_mib\": %.1f, \"peak_rss_mib\": %.1f, \"taken_mib\": %.1f, "
              "\"seconds\": %.2f}\n",
              mode.c_str(), verify ? "true" : "false", static_cast<long long>(ep), static_cast<long long>(rank),
              cached_before, static_cast<double>(read_bytes() - read_before) / (1 << 20), cached_mib(dir),
              static_cast<double>(usage.ru_maxrss) / 1024, taken / (1 << 20), seconds);
}

}  // namespace
}  // namespace moe

// checkpoint_load_probe write DIR | load DIR whole|sliced verify|noverify EP RANK
int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() == 2 && args[0] == "write") {
      moe::write_probe_checkpoint(args[1]);
    } else if (args.size() == 6 && args[0] == "load") {
      moe::load(args[1], args[2], args[3] == "verify", std::stoll(args[4]), std::stoll(args[5]));
    } else {
      std::fprintf(stderr, "usage: checkpoint_load_probe write DIR | load DIR whole|sliced verify|noverify EP RANK\n");
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

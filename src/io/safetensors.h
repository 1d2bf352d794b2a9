// The safetensors checkpoint format: an 8-byte little-endian header length, a JSON header
// (dtype, shape and data offsets per tensor, plus string metadata), then the raw tensor bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "src/io/atomic_dir.h"
#include "src/tensor/tensor.h"

namespace moe {

using SafetensorsMetadata = std::map<std::string, std::string>;

// Writes the tensors in list order (CUDA tensors are copied to the host first) with the
// metadata as "__metadata__", via a temporary file renamed over path (see AtomicFile). Names
// must be unique and non-empty. The header is space-padded so the data starts 8-byte aligned.
// Returns the file's size and CRC-32C as written, for checks of the written file and manifests.
FileDigest write_safetensors(const std::filesystem::path& path,
                           const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const SafetensorsMetadata& metadata = {});

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in data order
  SafetensorsMetadata metadata;
  uint64_t data_start = 0;  // file offset of the data section
};

// Parses and validates the header without reading tensor data (for listing and converters).
// Every problem is one line naming the file: "checkpoint truncated: <path> ..." when the file
// ends early, "corrupt checkpoint <path>: ..." for bad JSON, fields, offsets or sizes.
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // CPU tensors
  SafetensorsMetadata metadata;
  FileDigest digest;  // num_bytes always; crc32c of every byte of the file when read with_checksum
};

// Reads every tensor onto the CPU after the header checks above. with_checksum also computes
// the CRC-32C of the whole file as it is read (the header and data tile the file exactly).
SafetensorsFile read_safetensors(const std::filesystem::path& path, bool with_checksum = false);

}  // namespace moe

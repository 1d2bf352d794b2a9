// The safetensors checkpoint format: an 8-byte little-endian header length, a JSON header
// (dtype, shape and data offsets per tensor, plus string metadata), then the raw tensor bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "src/io/atomic_dir.h"
#include "src/util/mapped_file.h"
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

// Validates the header of a file_bytes-byte safetensors file whose bytes are at `file` (a
// mapping): every problem is one line naming `where`, "checkpoint truncated: <where> ..." when
// the file ends early, "corrupt checkpoint <where>: ..." for bad JSON, fields, offsets or sizes.
// The offsets are checked to tile the data section exactly, so entries index into `file` safely.
SafetensorsHeader parse_safetensors_header(const std::string& where, const unsigned char* file, uint64_t file_bytes);

// A safetensors file mapped read-only (see MappedFile), its header validated on open as above.
// Tensor bytes are read from disk only when copied, so a rank taking a few rows of a large
// checkpoint reads those rows' pages and not the file. Copies share one mapping.
class MappedSafetensors {
 public:
  MappedSafetensors() = default;  // no file: find() finds nothing
  explicit MappedSafetensors(const std::filesystem::path& path);

  bool is_open() const { return file_ != nullptr; }
  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }  // in data order
  const SafetensorsMetadata& metadata() const { return header_.metadata; }
  const SafetensorsHeader& header() const { return header_; }
  uint64_t num_bytes() const;                                   // the file's size
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr when absent
  // Throws "checkpoint <path> has no tensor '<name>'" when absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  // The entry's bytes inside the mapping (read-only).
  std::span<const unsigned char> bytes(const SafetensorsEntry& e) const;

  // e[N,...] -> [N,...]: a CPU copy of the whole tensor.
  Tensor copy(const SafetensorsEntry& e) const;
  // e[N,...], 0 <= row_begin <= row_end <= N -> [row_end - row_begin, ...]: only these rows' bytes are read.
  Tensor copy_rows(const SafetensorsEntry& e, int64_t row_begin, int64_t row_end) const;
  // Every tensor copied by name (what read_safetensors returns).
  std::map<std::string, Tensor> copy_all() const;
  // The size and, with_checksum, the CRC-32C of every byte of the file: one sequential pass
  // through the mapping (each page read once, dropped from this process's resident set after).
  FileDigest digest(bool with_checksum) const;

 private:
  std::shared_ptr<const MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;  // name -> position in header_.entries
  std::string path_;
};

// The header alone (for listing and converters), with the checks of parse_safetensors_header.
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // CPU tensors
  SafetensorsMetadata metadata;
  FileDigest digest;  // num_bytes always; crc32c of every byte of the file when read with_checksum
};

// Reads every tensor onto the CPU after the header checks above. with_checksum also computes
// the CRC-32C of the whole file (the header and data tile the file exactly).
SafetensorsFile read_safetensors(const std::filesystem::path& path, bool with_checksum = false);

}  // namespace moe

// checksums.json of a checkpoint directory: the size and CRC-32C of each file as it was written,
// so a load can refuse a file whose bytes changed since (bit rot, a bad copy, a truncated sync).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "src/io/atomic_dir.h"
#include "src/io/safetensors.h"

namespace moe {

inline constexpr const char* k_checksum_manifest = "checksums.json";

// File name inside the checkpoint directory -> its digest as written.
using ChecksumManifest = std::map<std::string, FileDigest>;

// Writes <dir>/checksums.json: {"algorithm": "crc32c", "files": {name: {"bytes": N, "crc32c": "hex"}}}.
FileDigest write_checksum_manifest(const std::filesystem::path& dir, const ChecksumManifest& manifest);
// <dir>/checksums.json, or nullopt when the directory has none (written before checksums existed).
// A manifest that is present but malformed throws naming the file.
std::optional<ChecksumManifest> read_checksum_manifest(const std::filesystem::path& dir);

// Compares what was read of <dir>/<file> with the manifest: the size always, the CRC-32C when
// checked (read.crc32c computed). Throws "checkpoint file <path> ..." naming the file.
void check_file_digest(const ChecksumManifest& manifest, const std::filesystem::path& dir, const std::string& file,
                       const FileDigest& read, bool checked);

// read_checksum_manifest, with one warning on stderr when verify is set and the directory has none.
std::optional<ChecksumManifest> checkpoint_manifest(const std::filesystem::path& dir, bool verify);
// A checkpoint's safetensors file <dir>/<file> mapped (tensor data not yet read), checked against
// the manifest when there is one: the size always; the CRC-32C when verify is set, which reads
// every byte of the file once, sequentially. Without verify only the bytes later copied are read.
MappedSafetensors open_verified_safetensors(const std::filesystem::path& dir, const std::string& file,
                                            const std::optional<ChecksumManifest>& manifest, bool verify);
// The same, every tensor copied onto the CPU.
SafetensorsFile read_verified_safetensors(const std::filesystem::path& dir, const std::string& file,
                                          const std::optional<ChecksumManifest>& manifest, bool verify);
// The same for a small text file read whole (trainer_state.json); `what` names it in errors.
std::string read_verified_text(const std::filesystem::path& dir, const std::string& file, const std::string& what,
                               const std::optional<ChecksumManifest>& manifest, bool verify);

}  // namespace moe

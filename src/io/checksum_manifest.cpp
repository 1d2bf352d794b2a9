// Checkpoint manifests: written with the checkpoint's other files inside its atomic directory,
// read and compared on load. The CRC-32C is one sequential pass over the file's mapping.
#include "src/io/checksum_manifest.h"

#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "src/util/check.h"
#include "src/util/crc32c.h"
#include "src/util/log.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace moe {

namespace {

constexpr const char* k_skip_hint = "set train.verify_checkpoints = false (generate: --no-verify) to load it anyway";

// "1a2b3c4d" -> the value; false unless exactly 8 hex digits.
bool parse_crc_hex(const std::string& text, uint32_t& value) {
  if (text.size() != 8) return false;
  value = 0;
  for (char c : text) {
    int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return false;
    value = (value << 4) | static_cast<uint32_t>(digit);
  }
  return true;
}

}  // namespace

FileDigest write_checksum_manifest(const fs::path& dir, const ChecksumManifest& manifest) {
  json files = json::object();
  for (const auto& [name, digest] : manifest) {
    files[name] = {{"bytes", digest.num_bytes}, {"crc32c", crc32c_hex(digest.crc32c)}};
  }
  json out = {{"algorithm", "crc32c"}, {"files", files}};
  return write_file_atomically(dir / k_checksum_manifest, out.dump(2) + "\n");
}

std::optional<ChecksumManifest> read_checksum_manifest(const fs::path& dir) {
  const fs::path path = dir / k_checksum_manifest;
  std::error_code error;
  if (!fs::exists(fs::symlink_status(path, error))) return std::nullopt;
  const std::string where = path.string();
  require_regular_file(where, "cannot open checkpoint checksums");  // before opening: a FIFO would block
  std::ifstream in(path);
  MOE_CHECK(in, "cannot open checkpoint checksums ", where);
  json manifest = json::parse(in, nullptr, false);
  MOE_CHECK(manifest.is_object() && manifest.value("algorithm", json()) == "crc32c" && manifest.contains("files") &&
                manifest["files"].is_object(),
            "corrupt checkpoint ", where, ": expected {\"algorithm\": \"crc32c\", \"files\": {...}}");
  ChecksumManifest result;
  for (const auto& [name, entry] : manifest["files"].items()) {
    uint32_t crc = 0;
    const bool ok = entry.is_object() && entry.contains("bytes") && entry["bytes"].is_number_unsigned() &&
                    entry.contains("crc32c") && entry["crc32c"].is_string() &&
                    parse_crc_hex(entry["crc32c"].get<std::string>(), crc);
    MOE_CHECK(ok, "corrupt checkpoint ", where, ": the entry of '", name.substr(0, 80),
              "' needs \"bytes\" (a non-negative integer) and \"crc32c\" (8 lowercase hex digits)");
    result[name] = {entry["bytes"].get<uint64_t>(), crc};
  }
  return result;
}

void check_file_digest(const ChecksumManifest& manifest, const fs::path& dir, const std::string& file,
                       const FileDigest& read, bool checked) {
  const std::string where = (dir / file).string();
  auto it = manifest.find(file);
  MOE_CHECK(it != manifest.end(), "checkpoint file ", where, " has no entry in ", k_checksum_manifest,
            ": it was not written with this checkpoint");
  MOE_CHECK(read.num_bytes == it->second.num_bytes, "checkpoint file ", where, " has ", read.num_bytes,
            " bytes but ", k_checksum_manifest, " records ", it->second.num_bytes,
            " as written: the file was changed or truncated after the save");
  MOE_CHECK(!checked || read.crc32c == it->second.crc32c, "checkpoint file ", where, " fails its checksum: CRC-32C ",
            crc32c_hex(read.crc32c), " but ", k_checksum_manifest, " records ", crc32c_hex(it->second.crc32c),
            ": its bytes changed after the save (disk or copy corruption); use another checkpoint, or ", k_skip_hint);
}

std::optional<ChecksumManifest> checkpoint_manifest(const fs::path& dir, bool verify) {
  std::optional<ChecksumManifest> manifest = read_checksum_manifest(dir);
  if (!manifest && verify) {
    log::warn("checkpoint {} has no {} (written before checksums): its files are not verified", dir.string(),
              k_checksum_manifest);
  }
  return manifest;
}

MappedSafetensors open_verified_safetensors(const fs::path& dir, const std::string& file,
                                            const std::optional<ChecksumManifest>& manifest, bool verify) {
  MappedSafetensors mapped(dir / file);
  if (manifest) check_file_digest(*manifest, dir, file, mapped.digest(verify), verify);
  return mapped;
}

SafetensorsFile read_verified_safetensors(const fs::path& dir, const std::string& file,
                                          const std::optional<ChecksumManifest>& manifest, bool verify) {
  MappedSafetensors mapped = open_verified_safetensors(dir, file, manifest, verify);
  return {mapped.copy_all(), mapped.metadata(), mapped.digest(false)};
}

std::string read_verified_text(const fs::path& dir, const std::string& file, const std::string& what,
                               const std::optional<ChecksumManifest>& manifest, bool verify) {
  const std::string where = (dir / file).string();
  require_regular_file(where, "cannot open " + what);  // before opening: a FIFO would block
  std::ifstream in(dir / file, std::ios::binary);
  MOE_CHECK(in, "cannot open ", what, " ", where);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (manifest) check_file_digest(*manifest, dir, file, {text.size(), crc32c(text.data(), text.size())}, verify);
  return text;
}

}  // namespace moe

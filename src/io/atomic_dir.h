// Atomic replacement of checkpoint directories and files: write everything under a temporary
// name next to the target, fsync it, then rename over the target, so readers and crashes see
// either the complete old version or the complete new one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include "src/util/crc32c.h"

namespace moe {

// A file's size and CRC-32C, as written (AtomicFile) or as read back (checkpoint verification).
struct FileDigest {
  uint64_t num_bytes = 0;
  uint32_t crc32c = 0;
  bool operator==(const FileDigest&) const = default;
};

// Usage: AtomicDir dir(final); write files under dir.path(); dir.commit();
// Staging happens in "<final>.tmp-<pid>" (a stale one from an earlier run with this pid is
// removed first). commit() fsyncs every file and directory inside, then swaps the staging dir
// into place: an existing <final> is exchanged atomically (renameat2 RENAME_EXCHANGE) and then
// deleted; where the file system cannot exchange, the old one is renamed aside first. Without
// commit() (an exception, an early return) the destructor removes the staging dir.
class AtomicDir {
 public:
  explicit AtomicDir(std::filesystem::path final_path);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::filesystem::path& path() const { return staging_path_; }
  const std::filesystem::path& final_path() const { return final_path_; }
  void commit();

 private:
  std::filesystem::path final_path_;
  std::filesystem::path staging_path_;
  bool committed_ = false;
};

// A file written under "<final>.tmp-<pid>" and renamed over <final> by commit() after fsync;
// the destructor removes the temporary if commit() never ran. For streaming large payloads.
// It counts and checksums (CRC-32C) the bytes as they are written, for checkpoint manifests.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t num_bytes);  // appends; throws naming the file on failure
  void commit();
  FileDigest digest() const { return {num_bytes_, crc_.value()}; }  // of the bytes written so far

 private:
  std::filesystem::path final_path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  uint64_t num_bytes_ = 0;
  Crc32c crc_;
  bool committed_ = false;
};

// The whole file at once: contents written to a temporary, fsynced, renamed over path.
FileDigest write_file_atomically(const std::filesystem::path& path, std::string_view contents);

}  // namespace moe

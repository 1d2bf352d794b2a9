// An output file of the data layer written under a temporary name and renamed into place on
// commit, so a reader never sees a partial shard or index; buffered appends and a patch-in-place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moe::data {

// Bytes go to "<path>.tmp.<pid>"; commit() flushes, fsyncs and renames it over `path`. Without
// commit() (an error, an early return) the destructor removes the temporary. Move-only.
class StagedFile {
 public:
  explicit StagedFile(std::string path);
  ~StagedFile();
  StagedFile(StagedFile&& other) noexcept;
  StagedFile& operator=(StagedFile&&) = delete;
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }  // bytes appended so far
  void append(const void* bytes, size_t count);
  // Overwrites bytes already appended (a header whose count is known only at the end).
  void write_at(uint64_t offset, const void* bytes, size_t count);
  void commit();

 private:
  void flush();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::vector<unsigned char> buffer_;
};

// A scratch file that is never renamed into place: created next to `near` and unlinked at once,
// so it vanishes with the process. Written once front to back, then read back front to back.
class SpoolFile {
 public:
  explicit SpoolFile(const std::string& near);
  ~SpoolFile();
  SpoolFile(const SpoolFile&) = delete;
  SpoolFile& operator=(const SpoolFile&) = delete;

  void append(const void* bytes, size_t count);
  uint64_t size() const { return size_; }
  // Reads bytes [offset, offset + count) back (after the last append).
  void read_at(uint64_t offset, void* bytes, size_t count);

 private:
  std::string name_;  // for messages
  int fd_ = -1;
  uint64_t size_ = 0;
  std::vector<unsigned char> buffer_;
};

}  // namespace moe::data

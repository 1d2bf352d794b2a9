// Temp-then-rename output files for token shards and Megatron datasets, and the unlinked spool
// the Megatron writer keeps its per-document lengths in. Errors name the file and errno's text.
#include "src/data/staged_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "src/util/check.h"

namespace moe::data {

namespace {

constexpr size_t k_buffer_bytes = 1 << 20;

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const void* bytes, size_t count, const std::string& path) {
  const char* p = static_cast<const char*>(bytes);
  while (count > 0) {
    ssize_t n = ::write(fd, p, count);
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, path, ": write failed: ", errno_text());
    p += n;
    count -= static_cast<size_t>(n);
  }
}

// Appends into `buffer`, writing it out whenever it fills.
void buffered_append(std::vector<unsigned char>& buffer, int fd, const void* bytes, size_t count,
                     const std::string& path) {
  if (buffer.size() + count > k_buffer_bytes) {
    write_all(fd, buffer.data(), buffer.size(), path);
    buffer.clear();
  }
  if (count >= k_buffer_bytes) {
    write_all(fd, bytes, count, path);
    return;
  }
  const auto* p = static_cast<const unsigned char*>(bytes);
  buffer.insert(buffer.end(), p, p + count);
}

}  // namespace

StagedFile::StagedFile(std::string path) : path_(std::move(path)) {
  temp_path_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOE_CHECK(fd_ >= 0, temp_path_, ": cannot create: ", errno_text());
  buffer_.reserve(k_buffer_bytes);
}

StagedFile::StagedFile(StagedFile&& other) noexcept
    : path_(std::move(other.path_)), temp_path_(std::move(other.temp_path_)), fd_(other.fd_), size_(other.size_),
      buffer_(std::move(other.buffer_)) {
  other.fd_ = -1;
  other.temp_path_.clear();
}

StagedFile::~StagedFile() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(temp_path_.c_str());
}

void StagedFile::append(const void* bytes, size_t count) {
  MOE_CHECK(fd_ >= 0, path_, ": written after commit");
  buffered_append(buffer_, fd_, bytes, count, temp_path_);
  size_ += count;
}

void StagedFile::flush() {
  write_all(fd_, buffer_.data(), buffer_.size(), temp_path_);
  buffer_.clear();
}

void StagedFile::write_at(uint64_t offset, const void* bytes, size_t count) {
  MOE_CHECK(fd_ >= 0, path_, ": written after commit");
  MOE_CHECK(offset + count <= size_, path_, ": write_at past the bytes appended");
  flush();
  const char* p = static_cast<const char*>(bytes);
  while (count > 0) {
    ssize_t n = ::pwrite(fd_, p, count, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, temp_path_, ": write failed: ", errno_text());
    p += n;
    offset += static_cast<uint64_t>(n);
    count -= static_cast<size_t>(n);
  }
}

void StagedFile::commit() {
  MOE_CHECK(fd_ >= 0, path_, ": committed twice");
  flush();
  MOE_CHECK(::fsync(fd_) == 0, temp_path_, ": fsync failed: ", errno_text());
  const int status = ::close(fd_);
  fd_ = -1;
  if (status != 0 || ::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(temp_path_.c_str());
    MOE_FAIL(path_, ": cannot move ", temp_path_, " into place: ", why);
  }
}

SpoolFile::SpoolFile(const std::string& near) {
  name_ = near + ".spool." + std::to_string(::getpid());
  fd_ = ::open(name_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  MOE_CHECK(fd_ >= 0, name_, ": cannot create scratch file: ", errno_text());
  ::unlink(name_.c_str());  // the open descriptor keeps it; nothing is left behind
  buffer_.reserve(k_buffer_bytes);
}

SpoolFile::~SpoolFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SpoolFile::append(const void* bytes, size_t count) {
  buffered_append(buffer_, fd_, bytes, count, name_);
  size_ += count;
}

void SpoolFile::read_at(uint64_t offset, void* bytes, size_t count) {
  MOE_CHECK(offset + count <= size_, name_, ": read past the end of the scratch file");
  if (!buffer_.empty()) {
    write_all(fd_, buffer_.data(), buffer_.size(), name_);
    buffer_.clear();
  }
  char* p = static_cast<char*>(bytes);
  while (count > 0) {
    ssize_t n = ::pread(fd_, p, count, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, name_, ": read failed: ", n == 0 ? "unexpected end of file" : errno_text());
    p += n;
    offset += static_cast<uint64_t>(n);
    count -= static_cast<size_t>(n);
  }
}

}  // namespace moe::data

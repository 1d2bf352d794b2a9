// Temp-then-rename writes for checkpoints. fsync before the rename makes the data durable
// before the name points at it; fsync of the parent makes the rename itself durable.
#include "src/io/atomic_dir.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include "src/util/check.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

std::string errno_text() { return std::strerror(errno); }

fs::path sibling_path(const fs::path& target, const char* tag) {
  fs::path name = target.filename();
  if (name.empty()) name = target.parent_path().filename();  // "dir/" written with a slash
  return target.parent_path() / (name.string() + tag + std::to_string(::getpid()));
}

fs::path clean_target(const fs::path& path) {
  MOE_CHECK(!path.empty(), "atomic write: empty target path");
  fs::path p = path.lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // drop a trailing slash
  return p;
}

void fsync_path(const fs::path& path, bool is_dir) {
  int fd = ::open(path.c_str(), (is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  MOE_CHECK(fd >= 0, "cannot open ", path.string(), " to sync it: ", errno_text());
  int status = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  errno = saved;
  MOE_CHECK(status == 0, "fsync of ", path.string(), " failed: ", errno_text());
}

fs::path parent_or_dot(const fs::path& path) {
  return path.parent_path().empty() ? fs::path(".") : path.parent_path();
}

void fsync_tree(const fs::path& dir) {
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) fsync_path(entry.path(), false);
    else if (entry.is_directory()) fsync_path(entry.path(), true);
  }
  fsync_path(dir, true);
}

void remove_quietly(const fs::path& path) {
  std::error_code ignored;
  fs::remove_all(path, ignored);
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  MOE_CHECK(::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from.string(), " to ", to.string(), ": ",
            errno_text());
}

}  // namespace

AtomicDir::AtomicDir(fs::path final_path)
    : final_path_(clean_target(final_path)), staging_path_(sibling_path(final_path_, ".tmp-")) {
  remove_quietly(staging_path_);
  std::error_code error;
  fs::create_directories(staging_path_, error);
  MOE_CHECK(!error, "cannot create ", staging_path_.string(), ": ", error.message());
}

AtomicDir::~AtomicDir() {
  if (!committed_) remove_quietly(staging_path_);
}

void AtomicDir::commit() {
  MOE_CHECK(!committed_, "AtomicDir: ", final_path_.string(), " was already committed");
  fsync_tree(staging_path_);
  std::error_code error;
  bool replacing = fs::exists(final_path_, error);
  if (!replacing) {
    rename_or_throw(staging_path_, final_path_);
  } else {
    MOE_CHECK(fs::is_directory(final_path_), "cannot replace ", final_path_.string(), ": it is not a directory");
    // Exchange keeps <final> present at every instant; the old version ends up at the staging path.
    if (::renameat2(AT_FDCWD, staging_path_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_EXCHANGE) == 0) {
      remove_quietly(staging_path_);
    } else {
      MOE_CHECK(errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP, "cannot exchange ", staging_path_.string(),
                " with ", final_path_.string(), ": ", errno_text());
      // A crash between these renames leaves the old version at "<final>.old-<pid>", never nothing.
      fs::path old_path = sibling_path(final_path_, ".old-");
      remove_quietly(old_path);
      rename_or_throw(final_path_, old_path);
      rename_or_throw(staging_path_, final_path_);
      remove_quietly(old_path);
    }
  }
  committed_ = true;
  fsync_path(parent_or_dot(final_path_), true);
}

AtomicFile::AtomicFile(fs::path final_path)
    : final_path_(clean_target(final_path)), temp_path_(sibling_path(final_path_, ".tmp-")) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOE_CHECK(fd_ >= 0, "cannot create ", temp_path_.string(), ": ", errno_text());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t num_bytes) {
  MOE_CHECK(fd_ >= 0, "AtomicFile: ", final_path_.string(), " is already committed");
  auto* bytes = static_cast<const char*>(data);
  crc_.update(data, num_bytes);
  num_bytes_ += num_bytes;
  while (num_bytes > 0) {
    ssize_t written = ::write(fd_, bytes, num_bytes);
    if (written < 0 && errno == EINTR) continue;
    MOE_CHECK(written > 0, "cannot write ", temp_path_.string(), ": ", errno_text());
    bytes += written;
    num_bytes -= static_cast<size_t>(written);
  }
}

void AtomicFile::commit() {
  MOE_CHECK(fd_ >= 0, "AtomicFile: ", final_path_.string(), " is already committed");
  MOE_CHECK(::fsync(fd_) == 0, "fsync of ", temp_path_.string(), " failed: ", errno_text());
  int status = ::close(fd_);
  fd_ = -1;
  MOE_CHECK(status == 0, "cannot close ", temp_path_.string(), ": ", errno_text());
  rename_or_throw(temp_path_, final_path_);
  committed_ = true;
  fsync_path(parent_or_dot(final_path_), true);
}

FileDigest write_file_atomically(const fs::path& path, std::string_view contents) {
  AtomicFile file(path);
  file.write(contents.data(), contents.size());
  file.commit();
  return file.digest();
}

}  // namespace moe

// An exclusive lock on a directory (flock on <dir>/.lock), held for an object's life, so that two
// processes never write one run directory; the kernel drops it when the holder dies (no stale lock).
#pragma once

#include <filesystem>

namespace moe {

// Takes the lock without waiting and writes the holder's pid into <dir>/.lock. Throws one line
// naming the directory and the pid holding it: "run directory D is in use (pid N holds D/.lock) ...".
// flock locks an open file: another process (also another rank on the same host) is refused, even
// through another path to the directory. The lock file itself is left behind when released.
class DirLock {
 public:
  explicit DirLock(const std::filesystem::path& dir);
  ~DirLock();
  DirLock(DirLock&& other) noexcept;
  DirLock& operator=(DirLock&&) = delete;
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;  // <dir>/.lock
  int fd_ = -1;
};

}  // namespace moe

// DirLock: flock(LOCK_EX | LOCK_NB) on <dir>/.lock; the holder's pid is written into the file so
// that the refused process can name it.
#include "src/io/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "src/util/check.h"

namespace moe {

namespace {

// The pid written by the holder, or "unknown" (it may not have written it yet).
std::string holder_pid(int fd) {
  char buffer[32] = {};
  ssize_t n = ::pread(fd, buffer, sizeof(buffer) - 1, 0);
  std::string text = n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  return digits ? text : "unknown";
}

}  // namespace

DirLock::DirLock(const std::filesystem::path& dir) : path_(dir / ".lock") {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  MOE_CHECK(fd_ >= 0, "cannot open the lock file ", path_.string(), ": ", std::strerror(errno));
  int status;
  do {
    status = ::flock(fd_, LOCK_EX | LOCK_NB);
  } while (status != 0 && errno == EINTR);
  if (status != 0) {
    const int error = errno;
    const std::string pid = holder_pid(fd_);
    ::close(fd_);
    fd_ = -1;
    MOE_CHECK(error == EWOULDBLOCK, "cannot lock ", path_.string(), ": ", std::strerror(error));
    MOE_FAIL("run directory ", dir.string(), " is in use by another run (pid ", pid, " holds ", path_.string(),
             "); wait for it to end or choose another train.run_dir");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  bool written = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) ==
                                                 static_cast<ssize_t>(pid.size());
  MOE_CHECK(written, "cannot write the lock file ", path_.string(), ": ", std::strerror(errno));
}

DirLock::DirLock(DirLock&& other) noexcept : path_(std::move(other.path_)), fd_(other.fd_) { other.fd_ = -1; }

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
}

}  // namespace moe

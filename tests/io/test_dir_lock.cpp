// DirLock: a second lock on a locked directory fails at once naming the directory and the
// holder's pid; releasing it, or the holder dying (SIGKILL), frees the directory.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "src/io/dir_lock.h"
#include "src/util/check.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

struct ScratchDir {
  fs::path path = fs::temp_directory_path() / ("moe-dir-lock-" + std::to_string(::getpid()));
  ScratchDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
};

TEST_CASE("a locked directory is refused naming it and the holder's pid, then freed", "[io][lock]") {
  ScratchDir dir;
  const std::string pid = std::to_string(::getpid());
  std::optional<DirLock> first(std::in_place, dir.path);
  std::string text;
  std::getline(std::ifstream(dir.path / ".lock"), text);
  REQUIRE(text == pid);
  // flock locks an open file: a second open, even in the same process, is refused.
  const std::string lock_file = (dir.path / ".lock").string();
  REQUIRE_THROWS_WITH(DirLock(dir.path), Contains("run directory " + dir.path.string() +
                                                  " is in use by another run (pid " + pid + " holds " + lock_file + ")"));
  DirLock moved(std::move(*first));  // a moved lock is still held
  first.reset();
  REQUIRE_THROWS_WITH(DirLock(dir.path), Contains("is in use"));
}

TEST_CASE("the lock of a killed process does not block", "[io][lock]") {
  ScratchDir dir;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    DirLock lock(dir.path);
    char byte = 1;
    if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
    ::pause();  // held until killed
    ::_exit(0);
  }
  char byte = 0;
  REQUIRE(::read(ready[0], &byte, 1) == 1);
  REQUIRE_THROWS_WITH(DirLock(dir.path), Contains("(pid " + std::to_string(child) + " holds"));
  ::kill(child, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(fs::exists(dir.path / ".lock"));  // the file stays; its lock went with the process
  REQUIRE_NOTHROW(DirLock(dir.path));
  ::close(ready[0]);
  ::close(ready[1]);
}

}  // namespace
}  // namespace moe

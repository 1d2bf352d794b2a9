// Out-of-line part of the error checks (keeps <sstream> work out of every caller's hot path).
#include "src/util/check.h"

#include <filesystem>

namespace moe {

void require_regular_file(const std::string& path, const std::string& action) {
  std::error_code error;
  if (std::filesystem::is_regular_file(path, error)) return;
  const char* reason = std::filesystem::exists(path, error) ? "not a regular file" : "no such file";
  MOE_FAIL(path, ": ", action, " (", reason, ")");
}

}  // namespace moe

namespace moe::detail {

void throw_error(const char* file, int line, const std::string& what) {
  std::string where = file;
  auto slash = where.find_last_of('/');
  if (slash != std::string::npos) where = where.substr(slash + 1);
  throw Error(what + " [" + where + ":" + std::to_string(line) + "]");
}

}  // namespace moe::detail

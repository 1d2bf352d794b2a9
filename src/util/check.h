// Error checks for the whole engine: one generic macro, specialised per library.
// Library code throws moe::Error; `main` catches, prints one line and exits non-zero.
#pragma once

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace moe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
// One argument of a message; a NaN reads "nan" whatever its sign bit (which the order of a sum sets).
template <typename T>
void append(std::ostringstream& out, const T& value) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(value)) {
      out << "nan";
      return;
    }
  }
  out << value;
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (append(out, args), ...);
  return out.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& what);
}  // namespace detail

// Throws "<path>: <action> (no such file | not a regular file)" unless `path` names a regular
// file. Call it before opening a user-given path: opening a FIFO or a device would block forever.
void require_regular_file(const std::string& path, const std::string& action);

}  // namespace moe

// MOE_FAIL(...) throws moe::Error with the message and the source location.
#define MOE_FAIL(...) ::moe::detail::throw_error(__FILE__, __LINE__, ::moe::detail::concat(__VA_ARGS__))

// MOE_CHECK(cond, msg...) throws when cond is false; the message says what the user did wrong.
#define MOE_CHECK(cond, ...)  \
  do {                        \
    if (!(cond)) {            \
      MOE_FAIL(__VA_ARGS__);  \
    }                         \
  } while (0)

// MOE_CHECK_CALL(expr, ok, describe): evaluates a library call, compares with its success
// value and reports the call text plus the library's own description of the status.
#define MOE_CHECK_CALL(expr, ok, describe)                                      \
  do {                                                                          \
    auto moe_status_ = (expr);                                                  \
    if (moe_status_ != (ok)) {                                                  \
      MOE_FAIL(#expr, " failed: ", describe(moe_status_));                      \
    }                                                                           \
  } while (0)

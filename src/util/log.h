// The engine's one logger (spdlog underneath): levels, --quiet/--verbose, a rank prefix under
// mpirun, human text off stdout when stdout carries data, and the run directory's train.log.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <utility>

namespace moe::log {

enum class Level { debug, info, warn, error };

// What reaches the terminal. Info and debug go to stdout (stderr after human_to_stderr());
// warnings and errors to stderr. With world_size > 1 each line starts "[rank R] ", and only
// rank 0 prints info and debug unless the level is debug (--verbose: every rank).
void configure(Level console_level, int rank, int world_size);
Level console_level();
// For commands whose stdout carries JSON or data (eval, bench, plan --json, generate...).
void human_to_stderr();
// Whether this rank's terminal shows messages of `level` (--quiet hides info, other ranks than
// 0 show info and debug only under --verbose).
bool shows(Level level);
// A progress display (src/util/progress.h) left its line on stderr open (no newline yet): the
// next terminal message ends that line first.
void set_open_line(bool open);
bool open_line();  // false again once a message ended it

// Every line from now on (debug included, with a UTC timestamp) also goes to `path`; the lines
// logged before the first call since the last open (up to a few thousand) are written first.
// append = false truncates. Only the caller decides which rank writes a file.
void open_file(const std::string& path, bool append);
void close_file();

void write(Level level, std::string_view text);
// To the file alone (the terminal has its own line): the error that ends the job.
void write_file_only(Level level, std::string_view text);

template <typename... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::debug, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::info, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::warn, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::error, fmt::format(format, std::forward<Args>(args)...));
}

// An std::ostream whose each complete line becomes one log line at `level`: for the layers that
// report through a stream (tokenize, hash-table), so tests can pass an std::ostringstream instead.
class LineStream : public std::ostream {
 public:
  explicit LineStream(Level level);
  // Each complete line goes to `sink` instead (a progress display's line).
  explicit LineStream(std::function<void(std::string_view)> sink);
  ~LineStream() override;

 private:
  class Buffer : public std::streambuf {
   public:
    explicit Buffer(std::function<void(std::string_view)> sink) : sink_(std::move(sink)) {}
    void flush_line();

   protected:
    int_type overflow(int_type c) override;

   private:
    std::function<void(std::string_view)> sink_;
    std::string line_;
  };
  Buffer buffer_;
};

// Paces the progress lines of a long operation: due() is true at most every `interval_seconds`
// (0: always), so a loop logs "every few seconds" whatever its speed.
class Progress {
 public:
  explicit Progress(double interval_seconds = 5.0);
  bool due();
  double seconds() const;  // since construction

 private:
  using Clock = std::chrono::steady_clock;
  double interval_;
  Clock::time_point start_, last_;
};

}  // namespace moe::log

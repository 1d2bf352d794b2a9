// The logger: one spdlog logger with two sinks of our own, the terminal (level and rank filter,
// stdout or stderr) and the run's log file (everything, timestamped; buffered until opened).
#include "src/util/log.h"

#include <spdlog/details/log_msg_buffer.h>
#include <spdlog/logger.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>

#include "src/util/check.h"

namespace moe::log {

namespace {

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
  }
  return spdlog::level::info;
}

// The terminal: "[rank R] " under mpirun, then "warning: " / "error: " / "debug: " (info bare,
// so the progress line of docs/metrics.md reads as before).
class ConsoleSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  Level level = Level::info;
  int rank = 0, world_size = 1;
  bool human_to_stderr = false;
  std::atomic<bool> open_line{false};  // a progress line on stderr waits for its newline

  bool shows(Level l) const {
    if (l < level) return false;
    return l >= Level::warn || rank == 0 || level == Level::debug;  // one info stream under mpirun
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const bool loud = msg.level >= spdlog::level::warn;
    if (msg.level < to_spdlog(level)) return;
    if (!loud && rank != 0 && level != Level::debug) return;  // one info stream under mpirun
    if (open_line) {
      std::fputc('\n', stderr);
      open_line = false;
    }
    std::string prefix = world_size > 1 ? fmt::format("[rank {}] ", rank) : std::string();
    if (msg.level == spdlog::level::debug) prefix += "debug: ";
    if (msg.level == spdlog::level::warn) prefix += "warning: ";
    if (msg.level == spdlog::level::err) prefix += "error: ";
    // Each line of a multi-line message carries the prefix (grep by rank sees all of it).
    const std::string_view text(msg.payload.data(), msg.payload.size());
    std::string lines;
    for (size_t begin = 0; begin <= text.size();) {
      const size_t end = std::min(text.find('\n', begin), text.size());
      lines += prefix;
      lines.append(text.substr(begin, end - begin));
      lines += '\n';
      begin = end + 1;
    }
    std::FILE* out = loud || human_to_stderr ? stderr : stdout;
    std::fwrite(lines.data(), 1, lines.size(), out);
    std::fflush(out);
  }
  void flush_() override {
    std::fflush(stdout);
    std::fflush(stderr);
  }
};

// The run's file: every level, "2026-01-02T03:04:05.678Z [info] text". Before a file is open the
// messages wait in memory (the start-up lines logged before the run directory is known).
class FileSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  FileSink() {
    set_formatter_(std::make_unique<spdlog::pattern_formatter>("%Y-%m-%dT%H:%M:%S.%eZ [%l] %v",
                                                               spdlog::pattern_time_type::utc, "\n"));
  }
  ~FileSink() override { close(); }

  void open(const std::string& path, bool append) {
    std::lock_guard<std::mutex> hold(mutex_);
    close();
    file_ = std::fopen(path.c_str(), append ? "a" : "w");
    MOE_CHECK(file_ != nullptr, "cannot open log file ", path);
    for (const auto& msg : pending_) print(msg);
    pending_.clear();
    std::fflush(file_);
  }
  void close_file() {
    std::lock_guard<std::mutex> hold(mutex_);
    close();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (file_ == nullptr) {
      if (pending_.size() == k_max_pending) pending_.pop_front();
      pending_.emplace_back(msg);
      return;
    }
    print(msg);
    std::fflush(file_);
  }
  void flush_() override {
    if (file_ != nullptr) std::fflush(file_);
  }

 private:
  static constexpr size_t k_max_pending = 4096;

  void print(const spdlog::details::log_msg& msg) {
    spdlog::memory_buf_t text;
    formatter_->format(msg, text);
    std::fwrite(text.data(), 1, text.size(), file_);
  }
  void close() {
    if (file_ != nullptr) std::fclose(file_);
    file_ = nullptr;
  }

  std::FILE* file_ = nullptr;
  std::deque<spdlog::details::log_msg_buffer> pending_;
};

struct State {
  std::shared_ptr<ConsoleSink> console = std::make_shared<ConsoleSink>();
  std::shared_ptr<FileSink> file = std::make_shared<FileSink>();
  spdlog::logger logger{"moe", {console, file}};
  State() { logger.set_level(spdlog::level::debug); }
};

State& state() {
  static State s;
  return s;
}

}  // namespace

void configure(Level console_level, int rank, int world_size) {
  ConsoleSink& c = *state().console;
  c.level = console_level;
  c.rank = rank;
  c.world_size = world_size;
}

Level console_level() { return state().console->level; }

void human_to_stderr() { state().console->human_to_stderr = true; }

bool shows(Level level) { return state().console->shows(level); }

void set_open_line(bool open) { state().console->open_line = open; }

bool open_line() { return state().console->open_line; }

void open_file(const std::string& path, bool append) { state().file->open(path, append); }

void close_file() { state().file->close_file(); }

void write(Level level, std::string_view text) {
  state().logger.log(to_spdlog(level), spdlog::string_view_t(text.data(), text.size()));
}

void write_file_only(Level level, std::string_view text) {
  state().file->log(spdlog::details::log_msg("moe", to_spdlog(level), spdlog::string_view_t(text.data(), text.size())));
}

LineStream::LineStream(Level level) : LineStream([level](std::string_view line) { moe::log::write(level, line); }) {}

LineStream::LineStream(std::function<void(std::string_view)> sink) : std::ostream(nullptr), buffer_(std::move(sink)) {
  rdbuf(&buffer_);
}

LineStream::~LineStream() { buffer_.flush_line(); }

void LineStream::Buffer::flush_line() {
  if (!line_.empty()) sink_(line_);
  line_.clear();
}

LineStream::Buffer::int_type LineStream::Buffer::overflow(int_type c) {
  if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
  if (traits_type::to_char_type(c) == '\n') {
    flush_line();
  } else {
    line_ += traits_type::to_char_type(c);
  }
  return c;
}

Progress::Progress(double interval_seconds) : interval_(interval_seconds), start_(Clock::now()), last_(start_) {}

bool Progress::due() {
  const Clock::time_point now = Clock::now();
  if (std::chrono::duration<double>(now - last_).count() < interval_) return false;
  last_ = now;
  return true;
}

double Progress::seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

}  // namespace moe::log

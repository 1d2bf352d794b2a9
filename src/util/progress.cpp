// Progress display: '\r'-updated terminal line on stderr, or paced plain lines through the logger.
#include "src/util/progress.h"

#include <unistd.h>

#include <cstdio>
#include <string>

namespace moe {

namespace {

ProgressDisplay::Mode automatic_mode() {
  return isatty(STDERR_FILENO) && log::shows(log::Level::info) ? ProgressDisplay::Mode::terminal
                                                               : ProgressDisplay::Mode::lines;
}

}  // namespace

ProgressDisplay::ProgressDisplay(double interval_seconds)
    : mode_(automatic_mode()),
      pacing_(mode_ == Mode::terminal ? k_refresh_seconds : interval_seconds),
      clock_(0.0),
      file_pacing_(interval_seconds) {}

ProgressDisplay::ProgressDisplay(Mode mode, std::ostream& out, double interval_seconds, double refresh_seconds)
    : mode_(mode),
      out_(&out),
      pacing_(mode == Mode::terminal ? refresh_seconds : interval_seconds),
      clock_(0.0),
      file_pacing_(interval_seconds) {}

ProgressDisplay::~ProgressDisplay() {
  // An unfinished line (an error ended the operation) keeps its text and gets its newline,
  // unless a log message has ended it already.
  if (shown_ && (out_ != nullptr || log::open_line())) write_terminal("", true);
}

bool ProgressDisplay::due() { return pacing_.due(); }

double ProgressDisplay::seconds() const { return clock_.seconds(); }

void ProgressDisplay::show(std::string_view text) {
  if (mode_ == Mode::terminal) {
    write_terminal(text, false);
    if (out_ == nullptr && file_pacing_.due()) log::write_file_only(log::Level::info, text);
  } else if (out_ != nullptr) {
    *out_ << text << '\n' << std::flush;
  } else {
    log::write(log::Level::info, text);
  }
}

void ProgressDisplay::finish(std::string_view text, log::Level level) {
  // A terminal line that never showed (a quick operation) is not started for the last text:
  // that is logged like a plain line, so a debug-level summary stays out of sight.
  if (mode_ == Mode::terminal && (shown_ || out_ != nullptr)) {
    write_terminal(text, true);
    if (out_ == nullptr) log::write_file_only(level, text);
  } else if (out_ != nullptr) {
    *out_ << text << '\n' << std::flush;
  } else {
    log::write(level, text);
  }
}

// "\r" + text + "erase to the end of the line" (a shorter text leaves no tail of the last one);
// end: then a newline. The destructor's end without text keeps the last text.
void ProgressDisplay::write_terminal(std::string_view text, bool end) {
  std::string line = "\n";
  if (!text.empty() || !end) line = "\r" + std::string(text) + "\x1b[K" + (end ? "\n" : "");
  if (out_ != nullptr) {
    *out_ << line << std::flush;
  } else {
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    log::set_open_line(!end);
  }
  shown_ = !end;
}

}  // namespace moe

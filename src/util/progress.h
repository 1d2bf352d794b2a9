// The progress display of a long operation: on a terminal one line on stderr rewritten in place
// ('\r'), otherwise plain lines through the logger at most every few seconds (as in log files).
#pragma once

#include <ostream>
#include <string>
#include <string_view>

#include "src/util/log.h"

namespace moe {

class ProgressDisplay {
 public:
  enum class Mode { terminal, lines };
  // Terminal mode when stderr is a terminal and this rank's console shows info lines (not
  // --quiet, rank 0 or --verbose); else lines mode through the logger (which --quiet silences).
  // interval_seconds paces the lines mode; the terminal line refreshes every k_refresh_seconds.
  explicit ProgressDisplay(double interval_seconds = 5.0);
  // A forced mode writing to `out` (tests; the lines mode then writes "text\n" to `out`).
  ProgressDisplay(Mode mode, std::ostream& out, double interval_seconds, double refresh_seconds = k_refresh_seconds);
  ~ProgressDisplay();
  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

  // Whether an update is due now (callers format the text only then); restarts the pacing.
  bool due();
  // Shows `text` now: the terminal line becomes `text` (and the log file gets it every
  // interval_seconds), or one info line is logged.
  void show(std::string_view text);
  // The operation's last line: on the terminal it replaces the line and ends it (and goes to the
  // log file); in lines mode it is logged at `level`.
  void finish(std::string_view text, log::Level level = log::Level::info);
  double seconds() const;  // since construction
  Mode mode() const { return mode_; }

  static constexpr double k_refresh_seconds = 0.2;

 private:
  void write_terminal(std::string_view text, bool end);

  Mode mode_;
  std::ostream* out_ = nullptr;  // null: the logger (lines) or stderr (terminal)
  bool shown_ = false;           // a terminal line is open
  log::Progress pacing_, clock_;
  log::Progress file_pacing_;  // terminal mode: the log file still gets a line every interval
};

}  // namespace moe

// The progress display: plain lines (no '\r') off a terminal, one '\r'-rewritten line ending with
// a newline on a terminal, and the pacing of updates.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>

#include "src/util/progress.h"

using namespace moe;

TEST_CASE("off a terminal the progress display writes plain lines", "[progress]") {
  std::ostringstream out;
  {
    ProgressDisplay progress(ProgressDisplay::Mode::lines, out, 0.0);
    REQUIRE(progress.due());  // interval 0: every update is due
    progress.show("step 1 of 3");
    progress.show("step 2 of 3");
    progress.finish("done in 0.1 s");
  }
  REQUIRE(out.str() == "step 1 of 3\nstep 2 of 3\ndone in 0.1 s\n");
  REQUIRE(out.str().find('\r') == std::string::npos);
}

TEST_CASE("on a terminal the progress display rewrites one line and ends it with a newline", "[progress]") {
  std::ostringstream out;
  {
    ProgressDisplay progress(ProgressDisplay::Mode::terminal, out, 5.0, 0.0);
    REQUIRE(progress.mode() == ProgressDisplay::Mode::terminal);
    progress.show("k-means: iteration 1/3");
    progress.show("k-means: iteration 2/3");
    progress.finish("k-means: converged");
  }
  const std::string text = out.str();
  REQUIRE(text == "\rk-means: iteration 1/3\x1b[K\rk-means: iteration 2/3\x1b[K\rk-means: converged\x1b[K\n");
  REQUIRE(text.find('\n') == text.size() - 1);  // one line on the screen
}

TEST_CASE("an unfinished terminal line keeps its text and ends with a newline", "[progress]") {
  std::ostringstream out;
  {
    ProgressDisplay progress(ProgressDisplay::Mode::terminal, out, 5.0, 0.0);
    progress.show("checkpoint: loading tensor 3 of 9");
  }
  REQUIRE(out.str() == "\rcheckpoint: loading tensor 3 of 9\x1b[K\n");
}

TEST_CASE("progress updates are paced", "[progress]") {
  std::ostringstream out;
  ProgressDisplay lines(ProgressDisplay::Mode::lines, out, 3600.0);
  REQUIRE_FALSE(lines.due());  // not before the interval has passed
  ProgressDisplay terminal(ProgressDisplay::Mode::terminal, out, 0.0, 3600.0);
  REQUIRE_FALSE(terminal.due());  // the terminal refresh paces the terminal mode
  REQUIRE(out.str().empty());
}

TEST_CASE("off a terminal and under --quiet the automatic display is the logger's lines", "[progress]") {
  log::configure(log::Level::warn, 0, 1);
  REQUIRE_FALSE(log::shows(log::Level::info));
  REQUIRE(ProgressDisplay().mode() == ProgressDisplay::Mode::lines);
  log::configure(log::Level::info, 1, 2);
  REQUIRE_FALSE(log::shows(log::Level::info));  // rank 1 without --verbose
  REQUIRE(log::shows(log::Level::warn));
  REQUIRE(ProgressDisplay().mode() == ProgressDisplay::Mode::lines);
  log::configure(log::Level::info, 0, 1);
  REQUIRE(log::shows(log::Level::info));
}

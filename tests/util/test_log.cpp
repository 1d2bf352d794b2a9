// The logger: the run file holds every level with timestamps (lines logged before it opened
// included), LineStream, progress pacing.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "src/util/log.h"

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("the log file holds debug lines, timestamped, and what was logged before it opened", "[log]") {
  const auto path = std::filesystem::temp_directory_path() / "moe_test_log_train.log";
  moe::log::configure(moe::log::Level::warn, 0, 1);  // quiet terminal: the file still gets everything
  moe::log::info("before the file {}", 1);
  moe::log::open_file(path.string(), false);
  moe::log::debug("a debug line {}", 2);
  moe::log::warn("a warning");
  moe::log::close_file();
  moe::log::info("after the file");
  const std::string text = read_text(path);
  REQUIRE_THAT(text, Catch::Contains("[info] before the file 1\n"));
  REQUIRE_THAT(text, Catch::Contains("[debug] a debug line 2\n"));
  REQUIRE_THAT(text, Catch::Contains("[warning] a warning\n"));
  REQUIRE_THAT(text, !Catch::Contains("after the file"));
  REQUIRE(std::regex_search(text, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[info\] before)")));
  // Appending keeps the earlier lines; a fresh file (append = false) starts empty.
  moe::log::open_file(path.string(), true);
  moe::log::info("appended");
  moe::log::close_file();
  REQUIRE_THAT(read_text(path), Catch::Contains("before the file") && Catch::Contains("appended"));
  moe::log::open_file(path.string(), false);
  moe::log::close_file();
  REQUIRE_THAT(read_text(path), !Catch::Contains("before the file"));
  std::filesystem::remove(path);
  moe::log::configure(moe::log::Level::info, 0, 1);
}

TEST_CASE("a LineStream logs each complete line, and the last one when it ends", "[log]") {
  const auto path = std::filesystem::temp_directory_path() / "moe_test_log_stream.log";
  moe::log::configure(moe::log::Level::error, 0, 1);
  moe::log::open_file(path.string(), false);
  {
    moe::log::LineStream lines(moe::log::Level::warn);
    lines << "first " << 1 << "\nsecond";
  }
  moe::log::close_file();
  moe::log::configure(moe::log::Level::info, 0, 1);
  const std::string text = read_text(path);
  REQUIRE_THAT(text, Catch::Contains("[warning] first 1\n") && Catch::Contains("[warning] second\n"));
  std::filesystem::remove(path);
}

TEST_CASE("an unwritable log file is named", "[log]") {
  REQUIRE_THROWS_WITH(moe::log::open_file("/nonexistent/dir/train.log", false),
                      Catch::Contains("cannot open log file /nonexistent/dir/train.log"));
}

TEST_CASE("progress pacing: due at most every interval", "[log]") {
  moe::log::Progress always(0.0);
  REQUIRE(always.due());
  REQUIRE(always.due());
  moe::log::Progress rarely(3600.0);
  REQUIRE_FALSE(rarely.due());
  REQUIRE(rarely.seconds() >= 0.0);
}

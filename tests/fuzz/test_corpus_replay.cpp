// Replays every committed fuzz input (tests/fuzz/corpus/<target>/*) through the same entry point
// libFuzzer drives: refusals are fine, an escaping exception or a crash fails the test.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "tests/fuzz/fuzz_targets.h"

namespace fs = std::filesystem;

TEST_CASE("every fuzz corpus input is handled without a crash", "[fuzz]") {
  const char* source = std::getenv("MOE_SOURCE_DIR");
  REQUIRE(source != nullptr);
  for (const auto& target : moe::fuzz::fuzz_targets()) {
    const fs::path dir = fs::path(source) / "tests/fuzz/corpus" / target.name;
    INFO("corpus " << dir.string());
    REQUIRE(fs::is_directory(dir));
    size_t num_inputs = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      INFO("input " << entry.path().string());
      REQUIRE_NOTHROW(target.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
      ++num_inputs;
    }
    CHECK(num_inputs >= 5);  // the corpus is committed with the tests
  }
}

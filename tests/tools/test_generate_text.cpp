// `moe generate` text handling: stop strings cut the continuation and hold back what could still
// become one (or an unfinished UTF-8 character) while streaming; prompt files as lines or JSONL.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "src/tools/generate_text.h"

using namespace moe;
using Catch::Matchers::Contains;

TEST_CASE("stop strings cut the continuation and hold back a partial match", "[generate]") {
  StopText t({"END", "\n\n"});
  CHECK_FALSE(t.update("abc"));
  CHECK(t.take_printable(false) == "abc");
  CHECK_FALSE(t.update("abcE"));
  CHECK(t.take_printable(false).empty());  // "E" may start "END"
  CHECK_FALSE(t.update("abcEN"));
  CHECK(t.take_printable(false).empty());
  CHECK_FALSE(t.update("abcENx\n"));
  CHECK(t.take_printable(false) == "ENx");
  CHECK(t.update("abcENx\n\nmore END"));
  CHECK(t.stop_found() == "\n\n");
  CHECK(t.text() == "abcENx");  // cut before the first stop string; the held-back "\n" never shows
  CHECK(t.take_printable(true).empty());
  CHECK(t.update("anything else"));  // stopped: later text is ignored
  CHECK(t.text() == "abcENx");
  CHECK_THROWS_WITH(StopText({""}), Contains("--stop: a stop string must not be empty"));
}

TEST_CASE("streaming holds back an unfinished UTF-8 character", "[generate]") {
  StopText t({});
  t.update("a\xC3");
  CHECK(t.take_printable(false) == "a");
  t.update("a\xC3\xA9");
  CHECK(t.take_printable(false) == "\xC3\xA9");
  t.update("a\xC3\xA9\xE2\x82");
  CHECK(t.take_printable(false).empty());
  CHECK(t.take_printable(true) == "\xE2\x82");
}

TEST_CASE("prompt files: lines, JSONL records and their errors", "[generate]") {
  const std::string lines = "generate_prompts_test.txt", jsonl = "generate_prompts_test.jsonl";
  std::ofstream(lines) << "first prompt\n\n  \nsecond\r\n";
  CHECK(read_prompts(lines, false, "text") == std::vector<std::string>{"first prompt", "second"});
  std::ofstream(jsonl) << "{\"text\": \"a\", \"body\": \"b\"}\n\n{\"body\": \"c\"}\n";
  CHECK(read_prompts(jsonl, true, "body") == std::vector<std::string>{"b", "c"});
  CHECK_THROWS_WITH(read_prompts(jsonl, true, "text"), Contains(jsonl + ":3: no string field 'text'"));
  std::ofstream(jsonl) << "not json\n";
  CHECK_THROWS_WITH(read_prompts(jsonl, true, "text"), Contains(jsonl + ":1: not a JSON line"));
  std::ofstream(lines) << "\n\n";
  CHECK_THROWS_WITH(read_prompts(lines, false, "text"), Contains(lines + " holds no prompts"));
  std::remove(lines.c_str());
  std::remove(jsonl.c_str());
}

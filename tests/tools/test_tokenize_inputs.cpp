// The inputs of `moe tokenize` and the pieces of its pipeline on their own: glob expansion and
// its errors, record batching independent of the batch size, JSONL fields and their errors,
// the validation choice (exact count, uniform, replayable) and the key-ordered sample.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <random>

#include "src/tools/tokenize_inputs.h"
#include "src/tools/tokenize_pipeline.h"
#include "tests/data/data_test_util.h"

using namespace moe::data;
using Catch::Contains;
using moe::test::TempDir;
using moe::test::write_bytes;

namespace {

struct Record {
  std::string text;
  uint32_t file;
  uint64_t line;
  bool operator==(const Record&) const = default;
};

std::vector<Record> read_records(const std::vector<InputFile>& files, bool paragraphs, uint64_t batch_bytes,
                                 uint64_t* total_bytes = nullptr) {
  CorpusReader reader(files, paragraphs);
  RawBatch batch;
  std::vector<Record> out;
  uint64_t bytes = 0;
  while (reader.next(batch, batch_bytes)) {
    for (const auto& r : batch.records) out.push_back({r.text, r.file, r.line});
    bytes += batch.input_bytes;
  }
  if (total_bytes) *total_bytes = bytes;
  return out;
}

}  // namespace

TEST_CASE("globs expand in byte order of names, patterns in the order given", "[tokenize][inputs]") {
  TempDir dir;
  for (const char* name : {"b.txt", "a.txt", "B.txt", "c.jsonl", "notes.md"}) write_bytes(dir.file(name), "x\n");
  std::filesystem::create_directory(dir.file("d.txt"));  // a directory the glob matches
  const auto files = expand_inputs({dir.file("c.jsonl"), dir.file("[aBb].txt"), dir.file("*.md")});
  std::vector<std::string> names;
  for (const auto& f : files) names.push_back(std::filesystem::path(f.path).filename().string());
  REQUIRE(names == std::vector<std::string>{"c.jsonl", "B.txt", "a.txt", "b.txt", "notes.md"});
  REQUIRE(files[0].kind == InputKind::jsonl);
  REQUIRE(files[1].kind == InputKind::text);
  REQUIRE(files[1].bytes == 2);

  REQUIRE_THROWS_WITH(expand_inputs({dir.file("*.csv")}), Contains("--input '" + dir.file("*.csv") + "' matches no files"));
  REQUIRE_THROWS_WITH(expand_inputs({dir.file("*.txt")}), Contains(dir.file("d.txt") + ": cannot open text corpus (not a regular file)"));
  REQUIRE_THROWS_WITH(expand_inputs({dir.file("a.txt"), dir.file("?.txt")}),
                      Contains(dir.file("a.txt") + ": named twice among the inputs (--input " + dir.file("?.txt") + ")"));
  REQUIRE_THROWS_WITH(expand_inputs({dir.file("none.jsonl")}),
                      Contains(dir.file("none.jsonl") + ": cannot open JSONL corpus (no such file)"));
  REQUIRE_THROWS_WITH(expand_inputs({}), Contains("no input corpus given"));
}

TEST_CASE("records do not depend on the batch size and never span files", "[tokenize][inputs]") {
  TempDir dir;
  // A paragraph cut by the end of a file (no final newline), CRLF, blank runs, a JSONL file between.
  write_bytes(dir.file("1.txt"), "\n\npara one\r\nline two\n  \n\npara two\nend without newline");
  write_bytes(dir.file("2.jsonl"), "{\"text\": \"j1\"}\n\n   \n{\"text\": \"j2\"}\n");
  write_bytes(dir.file("3.txt"), "next file\n\nlast\n");
  const auto files = expand_inputs({dir.file("1.txt"), dir.file("2.jsonl"), dir.file("3.txt")});
  uint64_t total = 0;
  const auto records = read_records(files, true, 1 << 20, &total);
  const std::vector<Record> expected = {{"para one\nline two", 0, 3},
                                        {"para two\nend without newline", 0, 7},
                                        {"{\"text\": \"j1\"}", 1, 1},
                                        {"{\"text\": \"j2\"}", 1, 4},
                                        {"next file", 2, 1},
                                        {"last", 2, 3}};
  REQUIRE(records == expected);
  REQUIRE(total == files[0].bytes + files[1].bytes + files[2].bytes);
  for (uint64_t batch_bytes : {1, 5, 17}) {
    uint64_t bytes = 0;
    REQUIRE(read_records(files, true, batch_bytes, &bytes) == expected);
    REQUIRE(bytes == total);
  }
  const auto lines = read_records(files, false, 3);
  REQUIRE(lines.size() == 8);  // every non-blank line of the text files, plus the JSONL records
  REQUIRE(lines[1] == Record{"line two", 0, 4});
}

TEST_CASE("a JSONL record's document is its field; bad records name file and line", "[tokenize][inputs][errors]") {
  InputFile file{"corpus.jsonl", InputKind::jsonl, 0};
  std::string doc;
  auto record = [&](std::string text) { return RawRecord{std::move(text), 0, 7}; };
  auto r = record(R"({"id": 3, "content": "caf\u00e9\n\nsecond paragraph", "text": 5})");
  REQUIRE(record_document(r, file, "content", doc));
  REQUIRE(doc == "caf\xc3\xa9\n\nsecond paragraph");
  r = record(R"({"content": "  \n "})");
  REQUIRE_FALSE(record_document(r, file, "content", doc));  // blank: skipped

  r = record("{\"content\": \"unterminated}");
  REQUIRE_THROWS_WITH(record_document(r, file, "content", doc), Contains("corpus.jsonl:7: not valid JSON"));
  r = record(R"(["content"])");
  REQUIRE_THROWS_WITH(record_document(r, file, "content", doc),
                      Contains("corpus.jsonl:7: a JSONL record must be an object, not array"));
  r = record(R"({"text": "x"})");
  REQUIRE_THROWS_WITH(record_document(r, file, "content", doc),
                      Contains("corpus.jsonl:7: the record has no field \"content\" (--jsonl-field)"));
  r = record(R"({"content": 12})");
  REQUIRE_THROWS_WITH(record_document(r, file, "content", doc),
                      Contains("corpus.jsonl:7: field \"content\" is number, not a string"));
}

TEST_CASE("the validation choice is exact, uniform and replayable", "[tokenize][split]") {
  for (auto [n, fraction, expected] : {std::tuple{40, 0.1, 4}, {3, 0.01, 1}, {5, 0.95, 4}, {1000, 0.05, 50}}) {
    ValidationPicker picker(n, fraction, 11, "x"), replay(n, fraction, 11, "x");
    int chosen = 0;
    for (int i = 0; i < n; ++i) {
      const bool is_val = picker.next();
      REQUIRE(is_val == replay.next());
      chosen += is_val ? 1 : 0;
    }
    REQUIRE(chosen == expected);
    REQUIRE(picker.num_validation() == expected);
    REQUIRE_THROWS_WITH(picker.next(), Contains("more documents than counted (" + std::to_string(n) + ")"));
  }
  // Each of 10 documents is chosen 3 times in 10 over many seeds (binomial: 20000 * 0.3 = 6000, sd 65).
  std::vector<int> counts(10, 0);
  for (uint64_t seed = 0; seed < 20000; ++seed) {
    ValidationPicker picker(10, 0.3, seed, "x");
    for (int i = 0; i < 10; ++i) counts[i] += picker.next() ? 1 : 0;
  }
  for (int c : counts) REQUIRE(std::abs(c - 6000) < 330);
  ValidationPicker none(7, 0, 1, "x");
  for (int i = 0; i < 7; ++i) REQUIRE_FALSE(none.next());
  REQUIRE_THROWS_WITH(ValidationPicker(1, 0.1, 1, "corpus.txt"),
                      Contains("corpus.txt: 1 document(s) cannot be split into train and validation"));
}

TEST_CASE("the sample keeps the smallest keys that fit, whatever the order they arrive in", "[tokenize][sample]") {
  std::vector<SampleLine> lines;
  std::mt19937_64 rng(5);
  for (int d = 0; d < 300; ++d) {
    lines.push_back({rng(), d, 0, std::string(1 + rng() % 40, 'a' + static_cast<char>(d % 26))});
  }
  auto kept = [&](std::vector<SampleLine> order, uint64_t budget) {
    SentenceSample sample(budget);
    for (auto& line : order) sample.offer(std::move(line));
    ValidationPicker all_train(300, 0, 1, "x");
    return sample.take_training_lines(all_train, 300);
  };
  auto shuffled = lines;
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  const auto a = kept(lines, 1000), b = kept(shuffled, 1000);
  REQUIRE(a == b);
  uint64_t bytes = 0;
  for (const auto& s : a) bytes += s.size();
  REQUIRE(bytes <= 1000);
  // The kept lines are exactly those under a key threshold: the smallest keys, in corpus order.
  auto by_key = lines;
  std::sort(by_key.begin(), by_key.end(), [](auto& x, auto& y) { return x.key < y.key; });
  uint64_t prefix_bytes = 0;
  size_t prefix = 0;
  while (prefix < by_key.size() && prefix_bytes + by_key[prefix].text.size() <= 1000) {
    prefix_bytes += by_key[prefix++].text.size();
  }
  REQUIRE(a.size() == prefix);
  REQUIRE(bytes == prefix_bytes);
  REQUIRE(kept(lines, 0).size() == 300);  // 0: every line
}

// The tokenize pipeline end to end on a generated corpus: shards decode back to the documents,
// EOS separates them, the document split is exact and seeded, and bad options fail clearly.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>

#include "src/data/token_shard.h"
#include "src/tools/tokenize_command.h"
#include "src/data/tokenizer.h"
#include "tests/data/data_test_util.h"
#include "tests/tools/tokenize_test_util.h"

using namespace moe::data;
using moe::test::decode_documents;
using moe::test::read_bytes;
using moe::test::TempDir;
using moe::test::write_bytes;

namespace {

// 40 paragraphs of 1..4 sentences; blank-line runs of varying length and CRLF line ends.
std::vector<std::string> write_corpus(const std::string& path) {
  auto sentences = moe::test::generated_sentences(200, 5);
  std::vector<std::string> paragraphs;
  std::string text = "\n";
  size_t next = 0;
  for (int p = 0; p < 40; ++p) {
    size_t n = 1 + static_cast<size_t>(p % 4);
    std::string para;
    for (size_t k = 0; k < n; ++k) {
      if (k > 0) para += '\n';
      para += sentences[next++];
    }
    paragraphs.push_back(para);
    std::string on_disk = para;
    if (p % 5 == 0) {  // CRLF line ends are read as LF
      std::string crlf;
      for (char c : on_disk) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
      on_disk = crlf + "\r";
    }
    text += on_disk + (p % 3 == 0 ? "\n\n\n  \n" : "\n\n");
  }
  write_bytes(path, text);
  return paragraphs;
}

TokenizeOptions base_options(const TempDir& dir, const std::string& out) {
  TokenizeOptions opt;
  opt.inputs = {dir.file("corpus.txt")};
  opt.out_dir = dir.file(out);
  opt.vocab_size = 400;
  opt.val_fraction = 0.1;
  opt.seed = 11;
  return opt;
}

}  // namespace

TEST_CASE("tokenize writes shards that decode back to the documents", "[data][tokenize]") {
  TempDir dir;
  const auto paragraphs = write_corpus(dir.file("corpus.txt"));
  std::ostringstream log;
  const auto summary = run_tokenize(base_options(dir, "out"), log);

  REQUIRE(summary.num_documents == 40);
  REQUIRE(summary.val_documents == 4);
  REQUIRE(summary.train_documents == 36);
  REQUIRE(summary.vocab_size == 400);
  REQUIRE(summary.model_path == dir.file("out/tokenizer.model"));
  REQUIRE(std::filesystem::exists(dir.file("out/train.tok")));
  REQUIRE(std::filesystem::exists(dir.file("out/val.tok")));
  const std::string line = log.str();
  REQUIRE(std::count(line.begin(), line.end(), '\n') == 1);
  REQUIRE_THAT(line, Catch::Contains("40 documents (paragraphs)") && Catch::Contains("train 36 docs") &&
                         Catch::Contains("val 4 docs") && Catch::Contains("vocab 400 (trained, u16)"));

  const Tokenizer tok = Tokenizer::load(summary.model_path);
  const auto train_docs = decode_documents(summary.train_path, tok);
  const auto val_docs = decode_documents(summary.val_path, tok);
  REQUIRE(static_cast<int64_t>(train_docs.size()) == summary.train_documents);
  REQUIRE(static_cast<int64_t>(val_docs.size()) == summary.val_documents);
  REQUIRE(TokenDataset::open(summary.train_path).size() == summary.train_tokens);
  REQUIRE(TokenDataset::open(summary.val_path).size() == summary.val_tokens);
  REQUIRE(TokenDataset::open(summary.train_path).dtype() == TokenDType::u16);

  // Each split keeps corpus order and the two splits partition the documents.
  size_t ti = 0, vi = 0;
  for (const auto& p : paragraphs) {
    if (ti < train_docs.size() && train_docs[ti] == p) {
      ++ti;
    } else {
      REQUIRE(vi < val_docs.size());
      REQUIRE(val_docs[vi] == p);
      ++vi;
    }
  }
  REQUIRE(ti == train_docs.size());
  REQUIRE(vi == val_docs.size());
}

TEST_CASE("the split is seeded and an existing tokenizer is reused", "[data][tokenize]") {
  TempDir dir;
  write_corpus(dir.file("corpus.txt"));
  std::ostringstream log;
  const auto first = run_tokenize(base_options(dir, "a"), log);
  const auto again = run_tokenize(base_options(dir, "b"), log);
  REQUIRE(read_bytes(first.train_path) == read_bytes(again.train_path));
  REQUIRE(read_bytes(first.val_path) == read_bytes(again.val_path));
  REQUIRE(read_bytes(first.model_path) == read_bytes(again.model_path));

  auto reseeded = base_options(dir, "c");
  reseeded.seed = 12;
  reseeded.tokenizer = first.model_path;
  const auto other = run_tokenize(reseeded, log);
  REQUIRE_THAT(log.str(), Catch::Contains("(loaded, u16)"));
  REQUIRE(read_bytes(other.model_path) == read_bytes(first.model_path));  // copied into c/
  REQUIRE(other.val_documents == 4);
  REQUIRE(read_bytes(other.val_path) != read_bytes(first.val_path));
  REQUIRE(other.train_tokens + other.val_tokens == first.train_tokens + first.val_tokens);

  // Lines mode: every non-blank line is a document (200 sentences in the corpus).
  auto lines = base_options(dir, "d");
  lines.documents = "lines";
  lines.tokenizer = first.model_path;
  lines.val_fraction = 0;
  const auto by_line = run_tokenize(lines, log);
  const int64_t num_lines = 10 * (1 + 2 + 3 + 4);  // paragraph p has 1 + p % 4 lines
  REQUIRE(by_line.num_documents == num_lines);
  REQUIRE(by_line.val_documents == 0);
  REQUIRE(TokenDataset::open(by_line.val_path).size() == 0);
}

TEST_CASE("tokenize rejects bad inputs with clear messages", "[data][tokenize][errors]") {
  TempDir dir;
  std::ostringstream log;
  auto opt = base_options(dir, "out");

  SECTION("missing corpus") {
    REQUIRE_THROWS_WITH(run_tokenize(opt, log),
                        Catch::Contains(opt.inputs[0]) && Catch::Contains("cannot open text corpus"));
  }
  SECTION("blank corpus") {
    write_bytes(opt.inputs[0], "\n  \n\t\n");
    REQUIRE_THROWS_WITH(run_tokenize(opt, log), Catch::Contains(opt.inputs[0]) && Catch::Contains("no documents"));
  }
  SECTION("one document cannot be split") {
    write_bytes(opt.inputs[0], "just one paragraph\nof two lines\n");
    REQUIRE_THROWS_WITH(run_tokenize(opt, log),
                        Catch::Contains("1 document(s) cannot be split into train and validation"));
  }
  SECTION("bad options") {
    write_corpus(opt.inputs[0]);
    opt.val_fraction = 1.0;
    REQUIRE_THROWS_WITH(run_tokenize(opt, log), Catch::Contains("val_fraction must be in [0, 1), got 1"));
    opt.val_fraction = 0.1;
    opt.documents = "sentences";
    REQUIRE_THROWS_WITH(run_tokenize(opt, log), Catch::Contains("unknown document mode 'sentences'"));
    opt.documents = "paragraphs";
    opt.tokenizer = dir.file("none.model");
    REQUIRE_THROWS_WITH(run_tokenize(opt, log),
                        Catch::Contains(opt.tokenizer) && Catch::Contains("cannot open tokenizer model"));
  }
}

TEST_CASE("--special-tokens reserves [MASK], [CLS], [SEP] and the sentinels; the documents still decode",
          "[data][tokenize][special]") {
  TempDir dir;
  const auto paragraphs = write_corpus(dir.file("corpus.txt"));
  std::ostringstream log;
  auto opt = base_options(dir, "special");
  opt.special_tokens = true;
  opt.num_sentinels = 3;
  const auto summary = run_tokenize(opt, log);
  REQUIRE(summary.vocab_size == 400);
  const Tokenizer tok = Tokenizer::load(summary.model_path);
  const std::vector<std::string> names = special_token_names(3);
  REQUIRE(names == std::vector<std::string>{"[MASK]", "[CLS]", "[SEP]", "<extra_id_0>", "<extra_id_1>",
                                            "<extra_id_2>"});
  for (size_t i = 0; i < names.size(); ++i) REQUIRE(tok.piece_id(names[i]) == 3 + static_cast<int32_t>(i));
  REQUIRE(tok.piece_id("<extra_id_3>") == -1);
  REQUIRE(tok.eos_id() == 2);
  // No data token is a reserved id, and the documents decode as before.
  for (const auto& path : {summary.train_path, summary.val_path}) {
    const TokenDataset ds = TokenDataset::open(path);
    for (int64_t i = 0; i < ds.size(); ++i) REQUIRE((ds.token(i) < 3 || ds.token(i) > 8));
  }
  const auto train_docs = decode_documents(summary.train_path, tok);
  REQUIRE(std::find(paragraphs.begin(), paragraphs.end(), train_docs.front()) != paragraphs.end());

  // A given tokenizer must already hold them: the first missing piece is named.
  auto plain = base_options(dir, "plain");
  const auto without = run_tokenize(plain, log);
  auto reuse = base_options(dir, "reuse");
  reuse.tokenizer = without.model_path;
  reuse.special_tokens = true;
  REQUIRE_THROWS_WITH(run_tokenize(reuse, log),
                      Catch::Contains("--special-tokens needs the piece [MASK], which the given tokenizer does not "
                                      "have"));
  reuse.tokenizer = summary.model_path;
  reuse.num_sentinels = 3;
  CHECK_NOTHROW(run_tokenize(reuse, log));
}

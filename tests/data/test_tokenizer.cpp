// Tokenizer: BPE training on generated text, exact encode/decode round trips (seen text,
// unseen words, non-ASCII, control bytes), reproducible training, and failures with messages.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <filesystem>

#include "src/data/tokenizer.h"
#include "tests/data/data_test_util.h"

using namespace moe::data;
using moe::test::read_bytes;
using moe::test::TempDir;
using moe::test::write_bytes;

namespace {

TokenizerTrainOptions small_options(const std::string& model_path) {
  TokenizerTrainOptions opt;
  opt.sentences = moe::test::generated_sentences(600, 99);
  opt.model_path = model_path;
  opt.vocab_size = 400;
  opt.seed = 7;
  return opt;
}

}  // namespace

TEST_CASE("a trained BPE tokenizer round-trips any text", "[data][tokenizer]") {
  TempDir dir;
  const auto opt = small_options(dir.file("tok.model"));
  Tokenizer::train(opt);
  REQUIRE(std::filesystem::exists(dir.file("tok.model")));
  REQUIRE(std::filesystem::exists(dir.file("tok.vocab")));

  const Tokenizer tok = Tokenizer::load(dir.file("tok.model"));
  REQUIRE(tok.vocab_size() == 400);
  REQUIRE(tok.unk_id() == 0);
  REQUIRE(tok.bos_id() == 1);
  REQUIRE(tok.eos_id() == 2);
  REQUIRE(tok.id_to_piece(2) == "</s>");
  REQUIRE(tok.id_to_piece(3) == "<0x00>");

  // Training text: the merges make it much shorter in tokens than in bytes.
  size_t bytes = 0, tokens = 0;
  for (const auto& s : opt.sentences) {
    auto ids = tok.encode(s);
    REQUIRE(tok.decode(ids) == s);
    bytes += s.size();
    tokens += ids.size();
  }
  REQUIRE(tokens * 2 < bytes);

  // Unseen words, digits, repeated and leading spaces, tabs, newlines, UTF-8 outside the
  // training alphabet and raw control bytes all come back unchanged (byte fallback).
  const std::vector<std::string> samples = {
      "the jury said",
      "Zebras quietly juxtapose 12345 xylophones!",
      "  two leading spaces and   three inside",
      "tabs\tand\nnewlines\n\nhere",
      "na\xc3\xafve caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82",
      std::string("nul\0byte and \x01\x7f", 17),
      "",
  };
  for (const auto& s : samples) {
    auto ids = tok.encode(s);
    for (int32_t id : ids) {
      REQUIRE(id >= 0);
      REQUIRE(id < tok.vocab_size());
      REQUIRE(id != tok.unk_id());
    }
    INFO("sample: " << s);
    REQUIRE(tok.decode(ids) == s);
  }
  REQUIRE(tok.encode("").empty());
}

TEST_CASE("tokenizer training is reproducible", "[data][tokenizer]") {
  TempDir dir;
  Tokenizer::train(small_options(dir.file("a.model")));
  Tokenizer::train(small_options(dir.file("b.model")));
  REQUIRE(read_bytes(dir.file("a.model")) == read_bytes(dir.file("b.model")));
  REQUIRE(read_bytes(dir.file("a.vocab")) == read_bytes(dir.file("b.vocab")));
}

TEST_CASE("tokenizer errors name the file and the fault", "[data][tokenizer][errors]") {
  TempDir dir;
  SECTION("missing model") {
    const auto path = dir.file("missing.model");
    REQUIRE_THROWS_WITH(Tokenizer::load(path), Catch::Contains(path) && Catch::Contains("cannot open tokenizer model"));
  }
  SECTION("a FIFO is refused before it is opened, so the load does not block") {
    const auto path = dir.file("fifo.model");
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    REQUIRE_THROWS_WITH(Tokenizer::load(path),
                        Catch::Contains(path + ": cannot open tokenizer model (not a regular file)"));
  }
  SECTION("not a model") {
    const auto path = dir.file("junk.model");
    write_bytes(path, "this is not a protobuf");
    REQUIRE_THROWS_WITH(Tokenizer::load(path), Catch::Contains(path) && Catch::Contains("not a SentencePiece model"));
  }
  SECTION("vocab larger than the text supports") {
    auto opt = small_options(dir.file("big.model"));
    opt.vocab_size = 50000;
    REQUIRE_THROWS_WITH(Tokenizer::train(opt),
                        Catch::Contains(opt.model_path) && Catch::Contains("tokenizer training failed") &&
                            Catch::Contains("Vocabulary size too high (50000)"));
    REQUIRE_FALSE(std::filesystem::exists(opt.model_path));
  }
  SECTION("vocab too small for byte fallback") {
    auto opt = small_options(dir.file("small.model"));
    opt.vocab_size = 200;
    REQUIRE_THROWS_WITH(Tokenizer::train(opt), Catch::Contains("vocab size 200 too small"));
  }
  SECTION("ids outside the vocabulary") {
    Tokenizer::train(small_options(dir.file("tok.model")));
    const Tokenizer tok = Tokenizer::load(dir.file("tok.model"));
    REQUIRE_THROWS_WITH(tok.decode({5, 400}), Catch::Contains("token 1 = 400 is outside the vocabulary [0, 400)"));
  }
}

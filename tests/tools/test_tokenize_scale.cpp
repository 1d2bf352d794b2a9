// `moe tokenize` over many inputs: globs and JSONL fields end to end, the same bytes for 1 and N
// threads, shards of whole documents with a manifest that lists them, Megatron output read by the
// specification and equal to the native tokens, the sampled tokenizer, progress and bad input.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "src/data/indexed_dataset.h"
#include "src/tools/tokenize_command.h"
#include "tests/data/data_test_util.h"
#include "tests/data/megatron_test_util.h"
#include "tests/tools/tokenize_test_util.h"

using namespace moe::data;
using Catch::Contains;
using moe::test::decode_documents;
using moe::test::read_bytes;
using moe::test::TempDir;
using moe::test::write_bytes;

namespace {

namespace fs = std::filesystem;

// Three text files of paragraphs and a JSONL file whose documents are in field "body"; returns
// the documents in the order tokenize reads them (text files by name, then the JSONL file).
std::vector<std::string> write_inputs(const TempDir& dir) {
  fs::create_directories(dir.file("in"));
  const auto sentences = moe::test::generated_sentences(360, 9);
  std::vector<std::string> docs;
  size_t next = 0;
  for (const char* name : {"in/a.txt", "in/b.txt", "in/c.txt"}) {
    std::string text;
    for (int p = 0; p < 30; ++p) {
      std::string para = sentences[next++];
      if (p % 3 == 0) para += "\n" + sentences[next++];
      docs.push_back(para);
      text += para + "\n\n";
    }
    write_bytes(dir.file(name), text);
  }
  std::string jsonl;
  for (int r = 0; r < 40; ++r) {
    const std::string body = sentences[next++] + (r % 4 == 0 ? "\n\n" + sentences[next++] : "");
    docs.push_back(body);
    jsonl += nlohmann::json{{"id", r}, {"body", body}, {"meta", {{"source", "test"}}}}.dump() + "\n";
    if (r == 7) jsonl += "\n";  // a blank line is no record
  }
  write_bytes(dir.file("in/d.jsonl"), jsonl);
  return docs;
}

TokenizeOptions scale_options(const TempDir& dir, const std::string& out) {
  TokenizeOptions o;
  o.inputs = {dir.file("in/*.txt"), dir.file("in/*.jsonl")};
  o.jsonl_field = "body";
  o.out_dir = dir.file(out);
  o.vocab_size = 400;
  o.val_fraction = 0.1;
  o.seed = 5;
  o.batch_bytes = 300;  // many batches, so threads really interleave
  o.progress_seconds = 1e9;
  return o;
}

std::map<std::string, std::string> directory_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) out[entry.path().filename().string()] = read_bytes(entry.path());
  return out;
}

std::vector<uint32_t> tokens_of(const std::vector<std::string>& shards) {
  std::vector<uint32_t> out;
  for (const auto& path : shards) {
    const auto part = read_all_tokens(open_token_source(path));
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

}  // namespace

TEST_CASE("globs, text and JSONL fields: every document in input order", "[tokenize][scale]") {
  TempDir dir;
  const auto docs = write_inputs(dir);
  auto o = scale_options(dir, "out");
  o.val_fraction = 0;
  std::ostringstream log;
  const auto summary = run_tokenize(o, log);
  REQUIRE(summary.num_inputs == 4);
  REQUIRE(summary.num_documents == static_cast<int64_t>(docs.size()));
  REQUIRE_THAT(log.str(), Contains("tokenize: 4 inputs: 130 documents (paragraphs; JSONL field 'body')"));
  const Tokenizer tok = Tokenizer::load(summary.model_path);
  REQUIRE(decode_documents(summary.train_path, tok) == docs);
}

TEST_CASE("the output bytes are the same for 1 and 4 threads", "[tokenize][scale]") {
  TempDir dir;
  write_inputs(dir);
  for (const char* format : {"native", "megatron"}) {
    INFO(format);
    auto o = scale_options(dir, std::string(format) + "1");
    o.format = format;
    o.shard_tokens = 700;
    o.sample_bytes = 3000;  // the sample, too, must not depend on the threads
    o.num_threads = 1;
    std::ostringstream log;
    run_tokenize(o, log);
    o.out_dir = dir.file(std::string(format) + "4");
    o.num_threads = 4;
    run_tokenize(o, log);
    const auto one = directory_bytes(dir.file(std::string(format) + "1"));
    const auto four = directory_bytes(dir.file(std::string(format) + "4"));
    REQUIRE(one.size() >= 8);  // shards of both splits, the model, its vocab, the manifest
    REQUIRE(one == four);
  }
}

TEST_CASE("shards hold whole documents and the manifest lists them", "[tokenize][scale]") {
  TempDir dir;
  write_inputs(dir);
  std::ostringstream log;
  const auto whole = run_tokenize(scale_options(dir, "whole"), log);
  auto o = scale_options(dir, "sharded");
  o.tokenizer = whole.model_path;
  o.shard_tokens = 700;
  const auto sharded = run_tokenize(o, log);
  REQUIRE(sharded.train_path.empty());
  REQUIRE(sharded.train_shards.size() > 3);
  REQUIRE(tokens_of(sharded.train_shards) == tokens_of({whole.train_path}));
  REQUIRE(tokens_of(sharded.val_shards) == tokens_of({whole.val_path}));

  const auto manifest = nlohmann::json::parse(read_bytes(sharded.manifest_path));
  REQUIRE(manifest["format"] == "native");
  REQUIRE(manifest["num_documents"] == sharded.num_documents);
  REQUIRE(manifest["inputs"].size() == 4);
  REQUIRE(manifest["inputs"][3]["kind"] == "jsonl");
  const auto& shards = manifest["splits"]["train"]["shards"];
  REQUIRE(shards.size() == sharded.train_shards.size());
  int64_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    INFO("shard " << i);
    const auto tokens = read_all_tokens(TokenDataset::open(sharded.train_shards[i]));
    REQUIRE(shards[i]["name"] == fs::path(sharded.train_shards[i]).filename().string());
    char name[32];
    std::snprintf(name, sizeof(name), "train-%05zu.tok", i);
    REQUIRE(shards[i]["name"] == name);
    REQUIRE(shards[i]["tokens"] == tokens.size());
    REQUIRE(shards[i]["bytes"] == 2 * tokens.size());
    REQUIRE(shards[i]["documents"] == std::count(tokens.begin(), tokens.end(), 2u));  // EOS = 2
    REQUIRE(tokens.back() == 2u);
    const auto last_doc = std::find(tokens.rbegin() + 1, tokens.rend(), 2u) - tokens.rbegin();
    if (i + 1 < shards.size()) {
      REQUIRE(tokens.size() >= 700);
      REQUIRE(tokens.size() - static_cast<size_t>(last_doc) < 700);  // closed by the document that reached 700
    }
    total += static_cast<int64_t>(tokens.size());
  }
  REQUIRE(manifest["splits"]["train"]["tokens"] == total);
  REQUIRE(total == sharded.train_tokens);

  // A second run with larger shards leaves no shard of the first behind.
  const std::string last = sharded.train_shards.back();
  o.shard_tokens = 5000;
  const auto fewer = run_tokenize(o, log);
  REQUIRE(fewer.train_shards.size() < sharded.train_shards.size());
  REQUIRE_FALSE(fs::exists(last));
  REQUIRE(tokens_of(fewer.train_shards) == tokens_of({whole.train_path}));
}

TEST_CASE("Megatron output: one sequence per document, the native tokens, read by the specification",
          "[tokenize][scale][megatron]") {
  TempDir dir;
  write_inputs(dir);
  std::ostringstream log;
  const auto native = run_tokenize(scale_options(dir, "native"), log);
  auto o = scale_options(dir, "megatron");
  o.format = "megatron";
  o.tokenizer = native.model_path;
  const auto megatron = run_tokenize(o, log);
  REQUIRE_THAT(log.str(), Contains("(loaded, uint16) -> " + o.out_dir + " (megatron, 1 + 1 shards)"));
  REQUIRE(megatron.train_path == dir.file("megatron/train"));
  REQUIRE(fs::exists(dir.file("megatron/train.bin")));
  REQUIRE(fs::exists(dir.file("megatron/val.idx")));
  for (const auto& [prefix, native_path, documents] :
       {std::tuple{megatron.train_path, native.train_path, megatron.train_documents},
        {megatron.val_path, native.val_path, megatron.val_documents}}) {
    const auto parsed = moe::test::read_spec_dataset(prefix);
    REQUIRE(parsed.code == 8);
    REQUIRE(static_cast<int64_t>(parsed.sequences.size()) == documents);
    std::vector<uint32_t> flat;
    for (const auto& sequence : parsed.sequences) {
      REQUIRE(sequence.back() == 2);  // EOS ends each document, as --append-eod
      flat.insert(flat.end(), sequence.begin(), sequence.end());
    }
    for (size_t d = 0; d < parsed.document_indices.size(); ++d) REQUIRE(parsed.document_indices[d] == int64_t(d));
    REQUIRE(flat == tokens_of({native_path}));
    REQUIRE(tokens_of({prefix + ".idx"}) == flat);
  }
}

TEST_CASE("the tokenizer is trained on a sample; progress lines report the rate", "[tokenize][scale]") {
  TempDir dir;
  write_inputs(dir);
  auto o = scale_options(dir, "sampled");
  o.sample_bytes = 2000;
  o.progress_seconds = 0;
  std::ostringstream log, progress;
  const auto summary = run_tokenize(o, log, &progress);
  REQUIRE(summary.sample_bytes <= 2000);
  REQUIRE(summary.sample_bytes > 1400);  // about the budget, less the validation documents' lines
  REQUIRE_THAT(log.str(), Contains("; tokenizer sample " + std::to_string(summary.sample_lines) + " of "));
  REQUIRE(summary.vocab_size == 400);
  const auto manifest = nlohmann::json::parse(read_bytes(summary.manifest_path));
  REQUIRE(manifest["tokenizer_sample"]["bytes"] == summary.sample_bytes);
  REQUIRE(manifest["tokenizer_sample"]["of_bytes"] > 4 * summary.sample_bytes);
  REQUIRE_THAT(progress.str(), Contains("tokenize: scan 100.0% (") && Contains("tokenize: encode 100.0% (") &&
                                   Contains(" MB/s, 130 documents, ") && Contains(" tokens/s)\n"));
  REQUIRE_THAT(log.str(), Contains(" MB/s; encoding ") && Contains(" MB/s) on "));
}

TEST_CASE("a bad record fails before anything is written", "[tokenize][scale][errors]") {
  TempDir dir;
  write_inputs(dir);
  auto o = scale_options(dir, "out");
  fs::create_directories(dir.file("bad"));
  write_bytes(dir.file("bad/e.jsonl"), "{\"body\": \"fine\"}\n{\"text\": \"no body\"}\n");
  o.inputs.push_back(dir.file("bad/e.jsonl"));
  std::ostringstream log;
  REQUIRE_THROWS_WITH(run_tokenize(o, log),
                      Contains(dir.file("bad/e.jsonl") + ":2: the record has no field \"body\" (--jsonl-field)"));
  REQUIRE_FALSE(fs::exists(dir.file("out/train.tok")));
  o.inputs.pop_back();
  o.format = "arrow";
  REQUIRE_THROWS_WITH(run_tokenize(o, log), Contains("unknown output format 'arrow' (expected native or megatron)"));
  o.format = "native";
  o.inputs = {dir.file("in/*.parquet")};
  REQUIRE_THROWS_WITH(run_tokenize(o, log), Contains("matches no files"));
}

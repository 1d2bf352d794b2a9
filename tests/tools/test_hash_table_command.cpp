// `moe hash-table`: the command builds, saves and reports a table; the binary runs it and its
// errors name the missing option.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <sstream>

#include "routing/hash_table.h"
#include "src/data/token_shard.h"
#include "src/tools/hash_table_command.h"
#include "tests/data/data_test_util.h"
#include "tests/routing/hash_test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
using test::TempDir;
using test::Blobs;
using test::make_blobs;
using test::write_embedding_checkpoint;

TEST_CASE("moe hash-table: builds, saves and reports the load", "[hash]") {
  TempDir dir;
  std::vector<uint32_t> tokens;
  for (uint32_t i = 0; i < 400; ++i) tokens.push_back((i * i + 3 * i) % 50);
  const std::string shard = dir.file("train.tok");
  data::write_token_shard(shard, tokens, data::TokenDType::u16);

  HashTableCommandOptions o;
  o.kind = "balanced";
  o.experts = 4;
  o.out = dir.file("balanced.safetensors");
  o.data = shard;
  o.vocab_size = 64;
  std::ostringstream log;
  HashTable t = run_hash_table_command(o, log);
  auto counts = count_token_frequencies(data::TokenDataset::open(shard), 64);
  REQUIRE(t.table == build_balanced_hash_table(counts, 4).table);
  REQUIRE(load_hash_table(o.out).table == t.table);
  REQUIRE_THAT(log.str(), Contains("hash-table: balanced, 64 tokens -> 4 experts") &&
                              Contains("frequency-weighted over 400 tokens of " + shard) &&
                              Contains("wrote " + o.out));
  const std::string line = log.str();
  REQUIRE(std::count(line.begin(), line.end(), '\n') == 1);

  Blobs blobs = make_blobs({6, 6, 6}, 4, 5);
  write_embedding_checkpoint(dir.path() / "ckpt", blobs.rows);
  HashTableCommandOptions c;
  c.kind = "dispersed";
  c.experts = 3;
  c.out = dir.file("dispersed.safetensors");
  c.checkpoint = (dir.path() / "ckpt").string();
  std::ostringstream clog;
  REQUIRE(run_hash_table_command(c, clog).table == build_dispersed_hash_table(blobs.rows, 3, 0, 20).table);
  REQUIRE_THAT(clog.str(), Contains("tokens per expert max/mean 1.000 over the vocabulary"));

  auto fails = [&](HashTableCommandOptions bad, const std::string& message) {
    std::ostringstream ignored;
    REQUIRE_THROWS_WITH(run_hash_table_command(bad, ignored), Contains(message));
  };
  HashTableCommandOptions no_data = o;
  no_data.data.clear();
  fails(no_data, "--kind balanced needs --data SHARD");
  HashTableCommandOptions no_vocab = o;
  no_vocab.vocab_size = 0;
  fails(no_vocab, "--kind balanced needs --vocab-size");
  HashTableCommandOptions small_vocab = o;
  small_vocab.vocab_size = 10;
  fails(small_vocab, "outside the vocabulary of 10 tokens");
  HashTableCommandOptions bigram = o;
  bigram.kind = "bigram";
  fails(bigram, "--kind bigram builds no table");
  HashTableCommandOptions no_ckpt = c;
  no_ckpt.checkpoint.clear();
  fails(no_ckpt, "--kind dispersed needs --checkpoint DIR");
  HashTableCommandOptions wrong_vocab = c;
  wrong_vocab.vocab_size = 32000;
  fails(wrong_vocab, "has an embedding of 18 tokens but --vocab-size is 32000");
}

TEST_CASE("the moe binary runs hash-table", "[hash][cli]") {
  const char* binary = std::getenv("MOE_BINARY");
  if (binary == nullptr) {
    WARN("MOE_BINARY is not set (run through ctest): skipping the binary check");
    return;
  }
  TempDir dir;
  const std::string out = dir.file("random.safetensors"), log = dir.file("log.txt");
  std::string cmd = std::string(binary) + " hash-table --kind random --experts 16 --vocab-size 1000 --seed 3 --out " +
                    out + " > " + log + " 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  REQUIRE(load_hash_table(out).table == build_random_hash_table(1000, 16, 3).table);
  REQUIRE_THAT(test::read_bytes(log), Contains("hash-table: random, 1000 tokens -> 16 experts (seed 3"));
  std::string bad = std::string(binary) + " hash-table --kind balanced --experts 4 --vocab-size 10 --out " + out +
                    " > " + log + " 2>&1";
  REQUIRE(std::system(bad.c_str()) != 0);
  REQUIRE_THAT(test::read_bytes(log), Contains("--kind balanced needs --data SHARD"));
}

}  // namespace
}  // namespace moe

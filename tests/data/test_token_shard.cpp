// Token shards: native write/read round trips (u16, u32), hand-written llm.c .bin shards, and
// every malformed file rejected with a message naming the file and the fault.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "src/data/token_shard.h"
#include "tests/data/data_test_util.h"

using namespace moe::data;
using moe::test::append_le;
using moe::test::read_bytes;
using moe::test::TempDir;
using moe::test::write_bytes;

namespace {

std::vector<uint32_t> random_tokens(size_t n, uint32_t bound, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> out(n);
  for (auto& t : out) t = static_cast<uint32_t>(rng() % bound);
  return out;
}

// An llm.c shard exactly as llm.c's data_common.write_datafile lays it out.
std::string llmc_bytes(int32_t magic, int32_t version, int32_t count, const std::vector<uint16_t>& tokens) {
  std::string bytes;
  append_le<int32_t>(bytes, magic);
  append_le<int32_t>(bytes, version);
  append_le<int32_t>(bytes, count);
  for (int i = 3; i < 256; ++i) append_le<int32_t>(bytes, 0);
  for (uint16_t t : tokens) append_le<uint16_t>(bytes, t);
  return bytes;
}

}  // namespace

TEST_CASE("native u16 shard round-trips and has the documented header", "[data][shard]") {
  TempDir dir;
  const auto path = dir.file("a.tok");
  const auto tokens = random_tokens(1009, 65536, 7);
  write_token_shard(path, tokens, TokenDType::u16);

  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() == 64 + 2 * tokens.size());
  REQUIRE(bytes.compare(0, 8, std::string("MOETOK\0\0", 8)) == 0);
  uint32_t version = 0, code = 0;
  uint64_t count = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&code, bytes.data() + 12, 4);
  std::memcpy(&count, bytes.data() + 16, 8);
  REQUIRE(version == 1);
  REQUIRE(code == 2);
  REQUIRE(count == tokens.size());
  for (size_t i = 24; i < 64; ++i) REQUIRE(bytes[i] == 0);

  auto ds = TokenDataset::open(path);
  REQUIRE(ds.format() == ShardFormat::native);
  REQUIRE(ds.dtype() == TokenDType::u16);
  REQUIRE(ds.size() == static_cast<int64_t>(tokens.size()));
  REQUIRE(read_all_tokens(ds) == tokens);
  const uint16_t* raw = ds.data_u16();
  for (size_t i = 0; i < tokens.size(); ++i) REQUIRE(raw[i] == tokens[i]);
  std::vector<int32_t> window(17);
  ds.copy_tokens(100, 17, window.data());
  for (int k = 0; k < 17; ++k) REQUIRE(window[k] == static_cast<int32_t>(tokens[100 + k]));
  REQUIRE_THROWS_WITH(ds.data_u32(), Catch::Contains("tokens are u16, not u32"));
  REQUIRE_THROWS_WITH(ds.token(1009), Catch::Contains("token index 1009 out of range [0, 1009)"));
  REQUIRE_THROWS_WITH(ds.copy_tokens(1000, 10, window.data()), Catch::Contains("out of range"));

  // The writer left no temporary file behind.
  int files = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir.path())) files += entry.is_regular_file();
  REQUIRE(files == 1);
}

TEST_CASE("native u32 shard round-trips ids above 65535", "[data][shard]") {
  TempDir dir;
  const auto path = dir.file("b.tok");
  auto tokens = random_tokens(333, 200000, 11);
  tokens[5] = 199999;
  write_token_shard(path, tokens, TokenDType::u32);
  auto ds = TokenDataset::open(path);
  REQUIRE(ds.dtype() == TokenDType::u32);
  REQUIRE(read_all_tokens(ds) == tokens);
  REQUIRE(ds.data_u32()[5] == 199999u);
  REQUIRE(token_dtype_for_vocab(65536) == TokenDType::u16);
  REQUIRE(token_dtype_for_vocab(65537) == TokenDType::u32);
}

TEST_CASE("a dataset stays valid after a move and overwriting a shard replaces it whole", "[data][shard]") {
  TempDir dir;
  const auto path = dir.file("c.tok");
  write_token_shard(path, std::vector<uint32_t>{1, 2, 3}, TokenDType::u16);
  auto first = TokenDataset::open(path);
  TokenDataset moved = std::move(first);
  write_token_shard(path, std::vector<uint32_t>{9, 8, 7, 6}, TokenDType::u16);
  // The old mapping still sees the old file (rename replaced the directory entry, not the bytes).
  REQUIRE(read_all_tokens(moved) == std::vector<uint32_t>{1, 2, 3});
  REQUIRE(read_all_tokens(TokenDataset::open(path)) == std::vector<uint32_t>{9, 8, 7, 6});
  // An empty shard is valid: a header and no tokens.
  write_token_shard(path, std::vector<uint32_t>{}, TokenDType::u32);
  REQUIRE(TokenDataset::open(path).size() == 0);
}

TEST_CASE("the writer rejects a token that does not fit in u16", "[data][shard][errors]") {
  TempDir dir;
  const auto path = dir.file("d.tok");
  REQUIRE_THROWS_WITH(write_token_shard(path, std::vector<uint32_t>{1, 70000}, TokenDType::u16),
                      Catch::Contains("token 1 = 70000 does not fit in u16"));
  REQUIRE_FALSE(std::filesystem::exists(path));
}

TEST_CASE("llm.c .bin shards are read by content", "[data][shard]") {
  TempDir dir;
  const auto path = dir.file("fineweb_val_000000.bin");
  std::vector<uint16_t> tokens = {50256, 464, 3290, 0, 65535, 11, 50256};
  write_bytes(path, llmc_bytes(20240520, 1, 7, tokens));
  auto ds = TokenDataset::open(path);
  REQUIRE(ds.format() == ShardFormat::llmc);
  REQUIRE(ds.dtype() == TokenDType::u16);
  REQUIRE(ds.size() == 7);
  for (int i = 0; i < 7; ++i) REQUIRE(ds.token(i) == tokens[static_cast<size_t>(i)]);

  // Version 2 (LLaMA 3) stores u32 tokens.
  std::string v2;
  append_le<int32_t>(v2, 20240520);
  append_le<int32_t>(v2, 2);
  append_le<int32_t>(v2, 2);
  for (int i = 3; i < 256; ++i) append_le<int32_t>(v2, 0);
  append_le<uint32_t>(v2, 128000);
  append_le<uint32_t>(v2, 5);
  write_bytes(dir.file("v2.bin"), v2);
  auto ds2 = TokenDataset::open(dir.file("v2.bin"));
  REQUIRE(ds2.dtype() == TokenDType::u32);
  REQUIRE(read_all_tokens(ds2) == std::vector<uint32_t>{128000, 5});

  // The same tokens in a native shard under a .bin name: the content decides, not the name.
  write_token_shard(dir.file("native.bin"), std::vector<uint32_t>{4, 5}, TokenDType::u16);
  REQUIRE(TokenDataset::open(dir.file("native.bin")).format() == ShardFormat::native);
}

TEST_CASE("malformed shards fail with a message naming the file and the fault", "[data][shard][errors]") {
  TempDir dir;

  SECTION("missing file") {
    const auto path = dir.file("nope.tok");
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path) && Catch::Contains("cannot open token shard") &&
                            Catch::Contains("no such file", Catch::CaseSensitive::No));
  }
  SECTION("bad magic") {
    const auto path = dir.file("text.tok");
    write_bytes(path, "hello world, this is not a shard");
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path) && Catch::Contains("bad magic") && Catch::Contains("0x68656c6c6f20776f"));
  }
  SECTION("empty file") {
    const auto path = dir.file("empty.tok");
    write_bytes(path, "");
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path) && Catch::Contains("bad magic") && Catch::Contains("file is empty"));
  }
  SECTION("truncated native shard: the count is larger than the file") {
    const auto path = dir.file("cut.tok");
    write_token_shard(path, random_tokens(100, 1000, 3), TokenDType::u16);
    std::filesystem::resize_file(path, 64 + 2 * 60);
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path) && Catch::Contains("truncated native token shard") &&
                            Catch::Contains("header says 100 tokens (200 bytes) but only 120 bytes"));
  }
  SECTION("native header cut short") {
    const auto path = dir.file("head.tok");
    write_bytes(path, std::string("MOETOK\0\0\1\0\0\0", 12));
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path) && Catch::Contains("shorter than the 64-byte header"));
  }
  SECTION("native trailing bytes") {
    const auto path = dir.file("long.tok");
    write_token_shard(path, random_tokens(10, 1000, 3), TokenDType::u16);
    std::filesystem::resize_file(path, 64 + 2 * 10 + 3);
    REQUIRE_THROWS_WITH(TokenDataset::open(path), Catch::Contains(path) && Catch::Contains("3 trailing bytes"));
  }
  SECTION("native unknown dtype and version") {
    std::string bytes(64, '\0');
    std::memcpy(bytes.data(), "MOETOK\0\0", 8);
    bytes[8] = 1;
    bytes[12] = 3;
    write_bytes(dir.file("dtype.tok"), bytes);
    REQUIRE_THROWS_WITH(TokenDataset::open(dir.file("dtype.tok")), Catch::Contains("unknown token dtype code 3"));
    bytes[8] = 7;
    bytes[12] = 2;
    write_bytes(dir.file("version.tok"), bytes);
    REQUIRE_THROWS_WITH(TokenDataset::open(dir.file("version.tok")),
                        Catch::Contains("unsupported native shard version 7"));
  }
  SECTION("truncated llm.c shard") {
    const auto path = dir.file("cut.bin");
    write_bytes(path, llmc_bytes(20240520, 1, 1000, {1, 2, 3}));
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path) && Catch::Contains("truncated llm.c token shard") &&
                            Catch::Contains("header says 1000 tokens (2000 bytes) but only 6 bytes"));
  }
  SECTION("llm.c header cut short and unknown version") {
    std::string bytes;
    append_le<int32_t>(bytes, 20240520);
    append_le<int32_t>(bytes, 1);
    write_bytes(dir.file("short.bin"), bytes);
    REQUIRE_THROWS_WITH(TokenDataset::open(dir.file("short.bin")),
                        Catch::Contains("shorter than the 1024-byte header"));
    write_bytes(dir.file("v9.bin"), llmc_bytes(20240520, 9, 0, {}));
    REQUIRE_THROWS_WITH(TokenDataset::open(dir.file("v9.bin")), Catch::Contains("unsupported llm.c shard version 9"));
  }
  SECTION("a directory is not a shard") {
    REQUIRE_THROWS_WITH(TokenDataset::open(dir.path().string()), Catch::Contains("not a regular file"));
  }
  SECTION("a FIFO is refused before it is opened, so the open does not block") {
    const auto path = dir.file("fifo.tok");
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    REQUIRE_THROWS_WITH(TokenDataset::open(path),
                        Catch::Contains(path + ": cannot open token shard (not a regular file)"));
  }
}

TEST_CASE("check_ids_below finds the first out-of-vocabulary id, naming the file and position", "[data][shard][errors]") {
  TempDir dir;
  using Catch::Matchers::Contains;
  // Past several scan chunks (65536 tokens each), so the bad id is found late in the file.
  for (TokenDType dtype : {TokenDType::u16, TokenDType::u32}) {
    INFO(token_dtype_name(dtype));
    const auto path = dir.file(std::string("ids_") + token_dtype_name(dtype) + ".tok");
    std::vector<uint32_t> tokens = random_tokens(200003, 1000, 3);
    write_token_shard(path, tokens, dtype);
    auto ds = TokenDataset::open(path);
    REQUIRE_NOTHROW(ds.check_ids_below(1000));
    REQUIRE_THROWS_WITH(ds.check_ids_below(999), Contains(path + ": token id 999 at position "));
    tokens[150001] = 1000;
    tokens[199999] = 4000;
    write_token_shard(path, tokens, dtype);
    ds = TokenDataset::open(path);
    REQUIRE_THROWS_WITH(ds.check_ids_below(1000),
                        Contains(path + ": token id 1000 at position 150001 is outside the vocabulary "
                                        "(model.vocab_size = 1000)"));
    REQUIRE_NOTHROW(ds.check_ids_below(4001));
  }
  const auto empty = dir.file("empty.tok");
  write_token_shard(empty, {}, TokenDType::u16);
  REQUIRE_NOTHROW(TokenDataset::open(empty).check_ids_below(1));
}

// Megatron .bin/.idx datasets: files written by Megatron-Core's own builder (committed fixtures)
// and by a writer following the specification in the test are read; our writer's output equals
// Megatron's bytes and parses by the specification; every malformed pair fails naming the file.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>

#include "src/data/batch_sampler.h"
#include "src/data/indexed_dataset.h"
#include "tests/data/data_test_util.h"
#include "tests/data/megatron_test_util.h"

using namespace moe::data;
using Catch::Contains;
using moe::test::append_le;
using moe::test::read_bytes;
using moe::test::SpecDataset;
using moe::test::TempDir;
using moe::test::write_bytes;

namespace {

std::string fixture(const std::string& name) {
  const char* source = std::getenv("MOE_SOURCE_DIR");
  REQUIRE(source != nullptr);
  return std::string(source) + "/tests/data/fixtures/" + name;
}

std::vector<int64_t> flat(const std::vector<std::vector<int64_t>>& sequences) {
  std::vector<int64_t> out;
  for (const auto& s : sequences) out.insert(out.end(), s.begin(), s.end());
  return out;
}

std::vector<int64_t> all_tokens(const TokenDataset& data) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < data.size(); ++i) out.push_back(data.token(i));
  return out;
}

// Documents of 1..3 sequences of 0..6 tokens below `vocab`, seeded.
SpecDataset generated_dataset(uint8_t code, int64_t vocab, int num_docs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  SpecDataset d;
  d.code = code;
  for (int doc = 0; doc < num_docs; ++doc) {
    const int num_sequences = 1 + static_cast<int>(rng() % 3);
    for (int s = 0; s < num_sequences; ++s) {
      std::vector<int64_t> tokens(rng() % 7);
      for (auto& t : tokens) t = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
      d.sequences.push_back(tokens);
    }
    d.document_indices.push_back(static_cast<int64_t>(d.sequences.size()));
  }
  return d;
}

}  // namespace

TEST_CASE("files written by Megatron-Core's IndexedDatasetBuilder are read", "[data][megatron]") {
  // tests/data/fixtures/make_megatron_fixture.py wrote these with Megatron-LM's own code.
  const std::string u16 = fixture("megatron_u16");
  const auto index = MegatronIndex::open(u16 + ".idx");
  REQUIRE(index.dtype() == MegatronDType::uint16);
  REQUIRE(index.num_sequences() == 3);
  REQUIRE(index.num_documents() == 3);
  REQUIRE(index.num_tokens() == 11);
  REQUIRE(index.sequence_length(2) == 4);
  REQUIRE(index.sequence_pointer(2) == 14);
  const std::vector<int64_t> expected = {5, 6, 7, 2, 8, 9, 2, 1000, 65535, 0, 2};
  for (const std::string& path : {u16, u16 + ".bin", u16 + ".idx"}) {
    INFO(path);
    const auto data = open_token_source(path);
    REQUIRE(data.format() == ShardFormat::megatron);
    REQUIRE(data.dtype() == TokenDType::u16);
    REQUIRE(data.path() == u16 + ".bin");
    REQUIRE(all_tokens(data) == expected);
  }

  const std::string i32 = fixture("megatron_sentences_i32");
  const auto sentences = MegatronIndex::open(i32 + ".idx");
  REQUIRE(sentences.dtype() == MegatronDType::int32);
  REQUIRE(sentences.num_sequences() == 5);
  REQUIRE(sentences.num_documents() == 4);  // one of them empty
  const std::vector<int64_t> doc_indices = {0, 2, 4, 4, 5};
  for (int64_t d = 0; d <= sentences.num_documents(); ++d) REQUIRE(sentences.document_index(d) == doc_indices[d]);
  const auto data = open_token_source(i32);
  REQUIRE(data.dtype() == TokenDType::u32);
  REQUIRE(all_tokens(data) == std::vector<int64_t>{10, 11, 12, 13, 14, 70000, 2, 3, 2147483647, 2});
  REQUIRE_THROWS_WITH(data.check_ids_below(100000),
                      Contains(i32 + ".bin: token id 2147483647 at position 8 is outside the vocabulary"));
}

TEST_CASE("a dataset written by the specification in the test is read", "[data][megatron]") {
  TempDir dir;
  for (uint8_t code : {uint8_t{8}, uint8_t{4}}) {
    const SpecDataset spec = generated_dataset(code, code == 8 ? 65536 : 1 << 30, 50, code);
    const std::string prefix = dir.file(code == 8 ? "spec_u16" : "spec_i32");
    moe::test::write_spec_dataset(prefix, spec);
    const auto index = MegatronIndex::open(prefix + ".idx");
    REQUIRE(index.num_sequences() == static_cast<int64_t>(spec.sequences.size()));
    REQUIRE(index.num_documents() == 50);
    for (size_t i = 0; i < spec.sequences.size(); ++i) {
      REQUIRE(index.sequence_length(static_cast<int64_t>(i)) == static_cast<int32_t>(spec.sequences[i].size()));
    }
    for (size_t d = 0; d < spec.document_indices.size(); ++d) {
      REQUIRE(index.document_index(static_cast<int64_t>(d)) == spec.document_indices[d]);
    }
    REQUIRE(all_tokens(open_token_source(prefix + ".bin")) == flat(spec.sequences));
  }
}

TEST_CASE("the writer produces Megatron's bytes and a dataset the specification parses", "[data][megatron]") {
  TempDir dir;
  // The fixture's documents through our writer: byte for byte what Megatron-Core wrote.
  const std::string prefix = dir.file("ours_u16");
  IndexedDatasetWriter writer(prefix, MegatronDType::uint16);
  for (const std::vector<uint32_t>& doc : std::vector<std::vector<uint32_t>>{{5, 6, 7, 2}, {8, 9, 2},
                                                                             {1000, 65535, 0, 2}}) {
    writer.add_document(doc);
  }
  REQUIRE_FALSE(std::filesystem::exists(prefix + ".bin"));  // nothing in place before commit
  writer.commit();
  REQUIRE(writer.num_documents() == 3);
  REQUIRE(writer.num_tokens() == 11);
  REQUIRE(read_bytes(prefix + ".idx") == read_bytes(fixture("megatron_u16.idx")));
  REQUIRE(read_bytes(prefix + ".bin") == read_bytes(fixture("megatron_u16.bin")));

  // int32 tokens, many documents (several index chunks' worth), one empty: parsed by the test's reader.
  const std::string wide = dir.file("ours_i32");
  IndexedDatasetWriter big(wide, megatron_dtype_for_vocab(100000));
  std::vector<std::vector<int64_t>> docs;
  std::mt19937_64 rng(3);
  for (int d = 0; d < 70000; ++d) {
    std::vector<uint32_t> tokens(d == 5 ? 0 : 1 + rng() % 4);
    for (auto& t : tokens) t = static_cast<uint32_t>(rng() % 100000);
    big.add_document(tokens);
    docs.emplace_back(tokens.begin(), tokens.end());
  }
  big.commit();
  const SpecDataset parsed = moe::test::read_spec_dataset(wide);
  REQUIRE(parsed.code == 4);
  REQUIRE(parsed.sequences == docs);
  REQUIRE(parsed.document_indices.size() == docs.size() + 1);
  for (size_t d = 0; d < parsed.document_indices.size(); ++d) {
    REQUIRE(parsed.document_indices[d] == static_cast<int64_t>(d));
  }
  REQUIRE(megatron_dtype_for_vocab(65499) == MegatronDType::uint16);
  REQUIRE(megatron_dtype_for_vocab(65500) == MegatronDType::int32);
}

TEST_CASE("an empty Megatron dataset opens, and training on it names the file", "[data][megatron]") {
  TempDir dir;
  const std::string prefix = dir.file("empty");
  IndexedDatasetWriter(prefix, MegatronDType::uint16).commit();
  REQUIRE(moe::test::read_spec_dataset(prefix).document_indices == std::vector<int64_t>{0});
  const auto data = open_token_source(prefix);
  REQUIRE(data.size() == 0);
  REQUIRE_THROWS_WITH(BatchSampler(data, 1, 2, 8), Contains(prefix + ".bin: has 0 tokens, fewer than seq_len + 1"));
}

TEST_CASE("open_token_source picks the format from the name, then the content", "[data][megatron]") {
  TempDir dir;
  write_token_shard(dir.file("a.tok"), std::vector<uint32_t>{1, 2, 3}, TokenDType::u16);
  REQUIRE(open_token_source(dir.file("a.tok")).format() == ShardFormat::native);
  // A .bin without an .idx beside it is an llm.c or native shard.
  write_token_shard(dir.file("b.bin"), std::vector<uint32_t>{4, 5}, TokenDType::u16);
  REQUIRE(open_token_source(dir.file("b.bin")).format() == ShardFormat::native);
  SpecDataset spec;
  spec.sequences = {{7, 8, 9}};
  spec.document_indices = {0, 1};
  moe::test::write_spec_dataset(dir.file("c"), spec);
  REQUIRE(open_token_source(dir.file("c.bin")).format() == ShardFormat::megatron);
  REQUIRE_THROWS_WITH(open_token_source(dir.file("nothing")),
                      Contains(dir.file("nothing") + ": cannot open token shard (no such file)"));
}

TEST_CASE("malformed Megatron datasets fail with one line naming the file", "[data][megatron][errors]") {
  TempDir dir;
  const std::string prefix = dir.file("bad");
  const std::string idx = prefix + ".idx", bin = prefix + ".bin";
  SpecDataset spec;
  spec.sequences = {{1, 2, 3}, {4, 5}, {6}};
  spec.document_indices = {0, 2, 3};
  const std::string good_idx = moe::test::spec_idx_bytes(spec), good_bin = moe::test::spec_bin_bytes(spec);
  write_bytes(bin, good_bin);
  auto fails_with = [&](const std::string& idx_bytes, const std::string& message) {
    write_bytes(idx, idx_bytes);
    REQUIRE_THROWS_WITH(open_token_source(prefix), Contains(message));
  };
  // Offsets in the index: lengths at 34, pointers at 34 + 12, document indices at 34 + 36.
  auto patched = [&](size_t offset, auto value) {
    std::string bytes = good_idx;
    std::memcpy(bytes.data() + offset, &value, sizeof(value));
    return bytes;
  };

  SECTION("missing files") {
    std::filesystem::remove(bin);
    write_bytes(idx, good_idx);
    REQUIRE_THROWS_WITH(open_token_source(idx), Contains(bin + ": cannot open Megatron data file (no such file)"));
    std::filesystem::remove(idx);
    write_bytes(bin, good_bin);
    REQUIRE_THROWS_WITH(open_token_source(prefix), Contains(idx + ": cannot open Megatron index (no such file)"));
  }
  SECTION("bad magic") {
    fails_with("MMAPIDX\0\0" + good_idx.substr(9), idx + ": bad magic: not a Megatron index");
    fails_with("", "first bytes are none, the file is empty");
  }
  SECTION("truncated index") {
    fails_with(good_idx.substr(0, 20), idx + ": truncated Megatron index: 20 bytes, shorter than the 34-byte header");
    fails_with(good_idx.substr(0, good_idx.size() - 1),
               idx + ": truncated Megatron index: the header says 3 sequences and 3 document indices");
    fails_with(patched(18, uint64_t{1} << 62), "the header says 4611686018427387904 sequences");
  }
  SECTION("version and dtype") {
    fails_with(patched(9, uint64_t{2}), idx + ": unsupported Megatron index version 2 (expected 1)");
    fails_with(patched(17, uint8_t{9}), idx + ": unknown Megatron dtype code 9");
    fails_with(patched(17, uint8_t{7}), idx + ": dtype code 7 (float32) is not a token type this engine reads");
  }
  SECTION("trailing bytes and multimodal indices") {
    fails_with(good_idx + "xx", idx + ": Megatron index has 2 trailing bytes after its 3 document indices");
    fails_with(good_idx + "abc", idx + ": 3 bytes after the document indices, one per sequence: a multimodal index");
  }
  SECTION("lengths and pointers") {
    fails_with(patched(34 + 4, int32_t{-2}), idx + ": sequence 1 has a negative length -2");
    fails_with(patched(34 + 12 + 8, int64_t{8}),
               idx + ": sequence 1 starts at byte 8 of the data file, but the sequences before it end at byte 6");
  }
  SECTION("document indices") {
    std::string no_docs = patched(26, uint64_t{0});
    no_docs.resize(no_docs.size() - 24);
    fails_with(no_docs, idx + ": Megatron index has no document indices");
    fails_with(patched(34 + 36, int64_t{1}), idx + ": the first document index is 1, not 0");
    fails_with(patched(34 + 36 + 16, int64_t{1}), idx + ": document index 2 is 1, before document index 1 = 2");
    fails_with(patched(34 + 36 + 16, int64_t{2}), idx + ": the last document index is 2 but the index has 3 sequences");
  }
  SECTION("an index that does not match its data file") {
    write_bytes(idx, good_idx);
    write_bytes(bin, good_bin.substr(0, 10));
    REQUIRE_THROWS_WITH(open_token_source(prefix),
                        Contains(bin + ": truncated Megatron data file: 10 bytes, but its index " + idx +
                                 " describes 6 uint16 tokens (12 bytes)"));
    write_bytes(bin, good_bin + good_bin);
    REQUIRE_THROWS_WITH(open_token_source(prefix),
                        Contains(bin + ": Megatron data file does not match its index: 24 bytes, but " + idx +
                                 " describes 6 uint16 tokens (12 bytes)"));
  }
  SECTION("token ids outside the vocabulary") {
    write_bytes(idx, good_idx);
    const auto data = open_token_source(prefix);
    REQUIRE_THROWS_WITH(data.check_ids_below(5, "model.vocab_size"),
                        Contains(bin + ": token id 5 at position 4 is outside the vocabulary (model.vocab_size = 5)"));
  }
  SECTION("the writer refuses what the dtype cannot hold") {
    IndexedDatasetWriter writer(dir.file("w"), MegatronDType::uint16);
    REQUIRE_THROWS_WITH(writer.add_document(std::vector<uint32_t>{1, 70000}),
                        Contains(dir.file("w") + ": token 1 = 70000 does not fit in uint16"));
    REQUIRE_THROWS_WITH(IndexedDatasetWriter(dir.file("f"), MegatronDType::float32),
                        Contains("written as uint16 or int32 tokens"));
  }
}

// The memory-mapped safetensors reader against a plain stream reader of the same byte ranges:
// every dtype, rows of every tensor, the checksum pass, and bad files refused on open.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "src/io/safetensors.h"
#include "src/util/crc32c.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

using Catch::Matchers::Contains;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// What the reader did before mapping: seek to the entry's data and read its bytes.
std::string stream_read(const fs::path& path, uint64_t data_start, const SafetensorsEntry& e) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_start + e.begin));
  std::string bytes(e.end - e.begin, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(in);
  return bytes;
}

std::string bytes_of(const Tensor& t) { return {static_cast<const char*>(t.data()), t.nbytes()}; }

// One tensor of every dtype and odd sizes, so later tensors start unaligned.
std::vector<std::pair<std::string, Tensor>> every_dtype() {
  return {
      {"w32", test::random_tensor({5, 3}, DType::f32, 1)},
      {"odd_bf16", test::random_tensor({3}, DType::bf16, 2)},
      {"w64", test::random_tensor({4, 2, 3}, DType::f64, 3)},
      {"wbf16", test::random_tensor({7, 2}, DType::bf16, 4)},
      {"ids", Tensor::from_vector(std::vector<int32_t>{-7, 0, 1, 2147483647, 5, 9}, {3, 2}, DType::i32)},
      {"i64", Tensor::from_vector(std::vector<int64_t>{int64_t{1} << 40, -3, 0, 123456789012345}, {4}, DType::i64)},
      {"scalar", Tensor::from_vector(std::vector<float>{2.5f}, {}, DType::f32)},
      {"empty", Tensor::zeros({0, 3}, DType::f32)},
      {"experts", test::random_tensor({6, 2, 2, 3}, DType::f32, 5)},
  };
}

TEST_CASE("the mapped reader returns the bytes a stream read returns, for every dtype", "[io]") {
  test::TempDir dir("moe-safetensors-mapped");
  const fs::path file = dir.str("m.safetensors");
  const auto tensors = every_dtype();
  write_safetensors(file, tensors, {{"format", "test"}});
  MappedSafetensors mapped(file);
  REQUIRE(mapped.metadata() == SafetensorsMetadata{{"format", "test"}});
  REQUIRE(mapped.entries().size() == tensors.size());
  REQUIRE(mapped.num_bytes() == fs::file_size(file));
  const SafetensorsHeader header = read_safetensors_header(file);
  for (const auto& [name, original] : tensors) {
    INFO(name);
    const SafetensorsEntry& e = mapped.entry(name);
    REQUIRE(e.dtype == original.dtype());
    REQUIRE(e.shape == original.shape());
    const std::string expected = stream_read(file, header.data_start, e);
    REQUIRE(expected == bytes_of(original));
    REQUIRE(std::string(reinterpret_cast<const char*>(mapped.bytes(e).data()), mapped.bytes(e).size()) == expected);
    const Tensor copied = mapped.copy(e);
    REQUIRE(copied.shape() == original.shape());
    REQUIRE(copied.dtype() == original.dtype());
    REQUIRE(bytes_of(copied) == expected);
  }
  // read_safetensors is the mapped reader copying everything.
  SafetensorsFile all = read_safetensors(file);
  for (const auto& [name, original] : tensors) REQUIRE(bytes_of(all.tensors.at(name)) == bytes_of(original));
  REQUIRE(mapped.find("absent") == nullptr);
  REQUIRE_THROWS_WITH(mapped.entry("absent"), Contains("checkpoint " + file.string() + " has no tensor 'absent'"));
}

TEST_CASE("copy_rows returns exactly the asked rows of every tensor", "[io]") {
  test::TempDir dir("moe-safetensors-rows");
  const fs::path file = dir.str("m.safetensors");
  const auto tensors = every_dtype();
  write_safetensors(file, tensors);
  MappedSafetensors mapped(file);
  for (const auto& [name, original] : tensors) {
    if (original.ndim() == 0) continue;  // a scalar has no rows
    const int64_t num_rows = original.shape()[0];
    for (int64_t begin = 0; begin <= num_rows; ++begin) {
      for (int64_t end = begin; end <= num_rows; ++end) {
        INFO(name << " rows [" << begin << ", " << end << ")");
        const Tensor rows = mapped.copy_rows(mapped.entry(name), begin, end);
        Shape shape = original.shape();
        shape[0] = end - begin;
        REQUIRE(rows.shape() == shape);
        REQUIRE(bytes_of(rows) == bytes_of(original.rows(begin, end)));
      }
    }
  }
  const SafetensorsEntry& w = mapped.entry("w32");
  REQUIRE_THROWS_WITH(mapped.copy_rows(w, 2, 6), Contains("checkpoint " + file.string() +
                                                           ": rows [2, 6) asked of tensor 'w32' of shape [5,3]"));
  REQUIRE_THROWS_WITH(mapped.copy_rows(w, 3, 2), Contains("rows [3, 2) asked of tensor 'w32'"));
  REQUIRE_THROWS_WITH(mapped.copy_rows(mapped.entry("scalar"), 0, 0), Contains("tensor 'scalar' of shape []"));
}

TEST_CASE("the mapped reader's digest is the size and CRC-32C of the whole file", "[io]") {
  test::TempDir dir("moe-safetensors-digest");
  const fs::path file = dir.str("m.safetensors");
  const FileDigest written = write_safetensors(file, every_dtype());
  const std::string bytes = read_file(file);
  MappedSafetensors mapped(file);
  REQUIRE(mapped.digest(true) == FileDigest{bytes.size(), crc32c(bytes.data(), bytes.size())});
  REQUIRE(mapped.digest(true) == written);
  REQUIRE(mapped.digest(false) == FileDigest{bytes.size(), 0});
  // The pass releases the pages it read; the data is still there to copy afterwards.
  REQUIRE(bytes_of(mapped.copy(mapped.entry("w64"))) == bytes_of(every_dtype()[2].second));
}

TEST_CASE("the mapped reader refuses bad files on open with the reader's messages", "[io][errors]") {
  test::TempDir dir("moe-safetensors-mapped-bad");
  const fs::path file = dir.str("bad.safetensors");
  auto require_open_error = [&](const std::string& bytes, const std::string& problem) {
    write_bytes(file, bytes);
    INFO("expected: " << problem);
    REQUIRE_THROWS_WITH(MappedSafetensors(file), Contains(problem) && Contains(file.string()));
  };
  write_safetensors(dir.str("good.safetensors"), {{"w", test::random_tensor({16}, DType::f32, 9)}});
  const std::string good = read_file(dir.str("good.safetensors"));
  require_open_error("", "checkpoint truncated: " + file.string() + " has 0 bytes, fewer than the 8-byte header length");
  require_open_error(good.substr(0, 5), "has 5 bytes, fewer than the 8-byte header length");
  require_open_error(good.substr(0, good.size() - 4), "checkpoint truncated: ");
  require_open_error(good.substr(0, good.size() - 4), "tensor 'w' ends at data byte 64 but the file holds only 60");
  std::string shifted = good;
  const size_t at = shifted.find("[0,64]");
  REQUIRE(at != std::string::npos);
  shifted.replace(at, 6, "[4,68]");  // same length: the header still parses, the offsets run past the end
  require_open_error(shifted, "checkpoint truncated: " + file.string() +
                                  ": tensor 'w' ends at data byte 68 but the file holds only 64 data bytes");
  REQUIRE_THROWS_WITH(MappedSafetensors(dir.path),
                      Contains(dir.path.string() + ": cannot open checkpoint (not a regular file)"));
}

}  // namespace
}  // namespace moe

// safetensors round trips, one test per corrupt or truncated input asserting its message, and
// atomic replacement of checkpoint directories and files leaving no temporaries behind.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "src/io/atomic_dir.h"
#include "src/io/safetensors.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

using Catch::Matchers::Contains;

// A fresh empty directory per test case, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("moe_test_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with the given header text (length prefix added, no padding) followed by data bytes.
std::string with_header(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Reading `bytes` as a checkpoint fails with a one-line message naming the file and the problem.
void require_read_error(const ScratchDir& dir, const std::string& bytes, const std::string& problem) {
  fs::path file = dir.path() / "bad.safetensors";
  write_bytes(file, bytes);
  INFO("expected: " << problem);
  try {
    read_safetensors(file);
    FAIL("read_safetensors accepted the file");
  } catch (const Error& e) {
    std::string message = e.what();
    INFO("message: " << message);
    REQUIRE_THAT(message, Contains(problem));
    REQUIRE_THAT(message, Contains(file.string()));
    REQUIRE(message.find('\n') == std::string::npos);
  }
}

TEST_CASE("safetensors round-trips every dtype and the metadata", "[train]") {
  ScratchDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"layers.0.w", test::random_tensor({2, 3}, DType::f32, 1)},
      {"layers.0.b", test::random_tensor({5}, DType::f64, 2)},
      {"embed", test::random_tensor({3, 4}, DType::bf16, 3)},  // 12 bf16 = 24 bytes
      {"ids", Tensor::from_vector(std::vector<int32_t>{-7, 0, 1, 2147483647, -2147483647, 5, 9}, {7}, DType::i32)},
      {"step", Tensor::from_vector(std::vector<int64_t>{int64_t{1} << 40, -3, 0, 123456789012345}, {2, 2},
                                   DType::i64)},
      {"scalar", Tensor::from_vector(std::vector<float>{2.5f}, {}, DType::f32)},
      {"empty", Tensor::zeros({0, 3}, DType::f32)},
      {"odd_bf16", test::random_tensor({3}, DType::bf16, 4)},  // 6 bytes: later tensors start unaligned
      {"after_odd", test::random_tensor({1, 2, 2, 1}, DType::f64, 5)},
  };
  SafetensorsMetadata metadata = {{"format", "pt"}, {"step", "42"}, {"config", "{\"d\": 64}"}};
  fs::path file = dir.path() / "model.safetensors";
  write_safetensors(file, tensors, metadata);

  SafetensorsFile loaded = read_safetensors(file);
  REQUIRE(loaded.metadata == metadata);
  REQUIRE(loaded.tensors.size() == tensors.size());
  for (const auto& [name, original] : tensors) {
    INFO(name);
    REQUIRE(loaded.tensors.count(name) == 1);
    const Tensor& t = loaded.tensors.at(name);
    REQUIRE(t.dtype() == original.dtype());
    REQUIRE(t.shape() == original.shape());
    REQUIRE(!t.is_cuda());
    REQUIRE(std::memcmp(t.data(), original.data(), original.nbytes()) == 0);
  }
  REQUIRE(names_in(dir.path()) == std::vector<std::string>{"model.safetensors"});  // no temporary left

  SECTION("the layout follows the format: aligned header, offsets in list order") {
    std::string bytes = read_file(file);
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | static_cast<unsigned char>(bytes[i]);
    REQUIRE((8 + header_bytes) % 8 == 0);
    auto header = nlohmann::json::parse(bytes.substr(8, header_bytes));
    REQUIRE(header["embed"]["dtype"] == "BF16");
    REQUIRE(header["ids"]["dtype"] == "I32");
    REQUIRE(header["step"]["shape"] == nlohmann::json::array({2, 2}));
    REQUIRE(header["scalar"]["shape"] == nlohmann::json::array());
    REQUIRE(header["__metadata__"]["step"] == "42");
    uint64_t offset = 0;
    for (const auto& [name, original] : tensors) {
      REQUIRE(header[name]["data_offsets"] == nlohmann::json::array({offset, offset + original.nbytes()}));
      offset += original.nbytes();
    }
    REQUIRE(bytes.size() == 8 + header_bytes + offset);
  }
  SECTION("the header alone lists entries in data order") {
    SafetensorsHeader header = read_safetensors_header(file);
    REQUIRE(header.entries.size() == tensors.size());
    REQUIRE(header.entries.front().begin == 0);
    REQUIRE(header.entries.back().name == "after_odd");
  }
}

TEST_CASE("safetensors reads a file written by another producer", "[train]") {
  ScratchDir dir;
  // As written by the reference implementation: no metadata, keys in any order.
  std::string data(12, '\0');
  float a[2] = {1.0f, -2.0f};
  int32_t b[1] = {77};
  std::memcpy(data.data(), b, 4);
  std::memcpy(data.data() + 4, a, 8);
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})";
  fs::path file = dir.path() / "ref.safetensors";
  write_bytes(file, with_header(header, data));
  SafetensorsFile loaded = read_safetensors(file);
  REQUIRE(loaded.metadata.empty());
  REQUIRE(loaded.tensors.at("a").to_vector<float>() == std::vector<float>{1.0f, -2.0f});
  REQUIRE(loaded.tensors.at("b").to_vector<int32_t>() == std::vector<int32_t>{77});
}

TEST_CASE("corrupt and truncated safetensors files fail with one clear line", "[train]") {
  ScratchDir dir;
  auto f32_entry = [](const std::string& name, const std::string& shape, uint64_t begin, uint64_t end) {
    return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(begin) + "," + std::to_string(end) + "]}";
  };
  SECTION("shorter than the length prefix") {
    require_read_error(dir, std::string(5, '\0'), "checkpoint truncated: ");
    require_read_error(dir, std::string(5, '\0'), "has 5 bytes, fewer than the 8-byte header length");
  }
  SECTION("header length beyond the file") {
    std::string bytes = with_header("{}", "");
    bytes[0] = static_cast<char>(200);
    require_read_error(dir, bytes, "checkpoint truncated: ");
    require_read_error(dir, bytes, "declares a 200-byte header but only 2 bytes follow");
  }
  SECTION("header is not JSON") {
    require_read_error(dir, with_header("{\"a\": [1, 2", ""), "corrupt checkpoint ");
    require_read_error(dir, with_header("{\"a\": [1, 2", ""), "header is not valid JSON");
    // A number too large for a double is the parser's out_of_range, not a parse_error (found by fuzzing).
    require_read_error(dir, with_header("{\"a\": 4611E4611686}", ""), "header is not valid JSON");
  }
  SECTION("header is JSON but not an object") {
    require_read_error(dir, with_header("[1, 2]", ""), "header is not a JSON object");
  }
  SECTION("data extends beyond the file") {
    std::string bytes = with_header("{" + f32_entry("w", "[4]", 0, 16) + "}", std::string(8, 'x'));
    require_read_error(dir, bytes, "checkpoint truncated: ");
    require_read_error(dir, bytes, "tensor 'w' ends at data byte 16 but the file holds only 8 data bytes");
  }
  SECTION("a real checkpoint cut short") {
    fs::path good = dir.path() / "good.safetensors";
    write_safetensors(good, {{"w", test::random_tensor({16}, DType::f32, 9)}});
    std::string bytes = read_file(good);
    require_read_error(dir, bytes.substr(0, bytes.size() - 4), "checkpoint truncated: ");
  }
  SECTION("overlapping tensors") {
    std::string header = "{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("b", "[2]", 4, 12) + "}";
    require_read_error(dir, with_header(header, std::string(12, 'x')), "corrupt checkpoint ");
    require_read_error(dir, with_header(header, std::string(12, 'x')), "tensors 'a' and 'b' overlap");
  }
  SECTION("offsets that do not match dtype and shape") {
    std::string header = "{" + f32_entry("w", "[3]", 0, 8) + "}";
    require_read_error(dir, with_header(header, std::string(8, 'x')), "tensor 'w' spans 8 bytes but F32 [3] needs 12");
  }
  SECTION("offsets that run backwards") {
    std::string header = "{" + f32_entry("w", "[0]", 8, 4) + "}";
    require_read_error(dir, with_header(header, std::string(8, 'x')), "data_offsets [8, 4] that run backwards");
  }
  SECTION("bytes that belong to no tensor") {
    std::string header = "{" + f32_entry("a", "[1]", 0, 4) + "," + f32_entry("b", "[1]", 8, 12) + "}";
    require_read_error(dir, with_header(header, std::string(12, 'x')), "data bytes 4 to 8 belong to no tensor");
    std::string trailing = "{" + f32_entry("a", "[1]", 0, 4) + "}";
    require_read_error(dir, with_header(trailing, std::string(6, 'x')), "2 bytes after the last tensor's data");
  }
  SECTION("unsupported dtype and malformed fields") {
    std::string f16 = R"({"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})";
    require_read_error(dir, with_header(f16, "xx"), "tensor 'h' has unsupported dtype \"F16\"");
    std::string no_shape = R"({"h":{"dtype":"F32","data_offsets":[0,4]}})";
    require_read_error(dir, with_header(no_shape, "xxxx"), "tensor 'h' has no \"shape\" array");
    std::string negative = R"({"h":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})";
    require_read_error(dir, with_header(negative, "xxxx"), "shape entry that is not a non-negative integer");
    std::string offsets = R"({"h":{"dtype":"F32","shape":[1],"data_offsets":[0]}})";
    require_read_error(dir, with_header(offsets, "xxxx"), "needs \"data_offsets\" as two non-negative integers");
    std::string metadata = R"({"__metadata__":{"step":3}})";
    require_read_error(dir, with_header(metadata, ""), "__metadata__ value of 'step' is not a string");
  }
  SECTION("a header nested 100,000 deep is refused before parsing, the value never quoted whole") {
    std::string deep = R"({"w":{"dtype":"F32","shape":)" + std::string(100000, '[') + std::string(100000, ']') +
                       R"(,"data_offsets":[0,0]}})";
    require_read_error(dir, with_header(deep, ""), "header nests arrays/objects 100002 deep (at most 64 allowed)");
    // Brackets inside strings are text, not nesting: this header is read.
    fs::path quoted = dir.path() / "quoted.safetensors";
    write_bytes(quoted, with_header(R"({"__metadata__":{"note":")" + std::string(1000, '[') + R"(\"{"}})", ""));
    REQUIRE(read_safetensors(quoted).metadata.at("note") == std::string(1000, '[') + "\"{");
    // A bad value 60 deep is within the limit; the message quotes at most 80 characters of it.
    std::string nested = R"({"w":{"dtype":"F32","shape":[)" + std::string(60, '[') + std::string(60, ']') +
                         R"(],"data_offsets":[0,0]}})";
    fs::path file = dir.path() / "nested.safetensors";
    write_bytes(file, with_header(nested, ""));
    try {
      read_safetensors(file);
      FAIL("read_safetensors accepted the file");
    } catch (const Error& e) {
      std::string message = e.what();
      REQUIRE_THAT(message, Contains("shape entry that is not a non-negative integer: [[[[") && Contains("]]]..."));
      REQUIRE(message.size() < file.string().size() + 200);
    }
  }
  SECTION("a FIFO is refused before it is opened, so the read does not block") {
    fs::path fifo = dir.path() / "fifo.safetensors";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    REQUIRE_THROWS_WITH(read_safetensors(fifo), Contains(fifo.string() + ": cannot open checkpoint (not a regular file)"));
  }
  SECTION("a missing file") {
    REQUIRE_THROWS_WITH(read_safetensors(dir.path() / "absent.safetensors"), Contains("cannot open checkpoint"));
  }
}

TEST_CASE("write_safetensors rejects duplicate and reserved names", "[train]") {
  ScratchDir dir;
  Tensor t = Tensor::zeros({2}, DType::f32);
  fs::path file = dir.path() / "x.safetensors";
  REQUIRE_THROWS_WITH(write_safetensors(file, {{"w", t}, {"w", t}}), Contains("tensor 'w' appears twice"));
  REQUIRE_THROWS_WITH(write_safetensors(file, {{"__metadata__", t}}), Contains("invalid tensor name"));
  REQUIRE(names_in(dir.path()).empty());
}

TEST_CASE("AtomicDir replaces a directory and leaves no temporaries", "[train]") {
  ScratchDir dir;
  fs::path target = dir.path() / "step_100";
  fs::create_directories(target / "old_sub");
  write_bytes(target / "old.txt", "old");

  SECTION("commit swaps the new contents in") {
    {
      AtomicDir staging(target);
      REQUIRE(staging.path().parent_path() == dir.path());
      REQUIRE_THAT(staging.path().filename().string(), Contains("step_100.tmp-"));
      fs::create_directories(staging.path() / "sub");
      write_bytes(staging.path() / "new.txt", "new");
      write_bytes(staging.path() / "sub" / "inner.txt", "inner");
      REQUIRE(read_file(target / "old.txt") == "old");  // untouched until commit
      staging.commit();
    }
    REQUIRE(names_in(target) == std::vector<std::string>{"new.txt", "sub"});
    REQUIRE(read_file(target / "new.txt") == "new");
    REQUIRE(read_file(target / "sub" / "inner.txt") == "inner");
    REQUIRE(names_in(dir.path()) == std::vector<std::string>{"step_100"});
  }
  SECTION("without commit the old directory stays and the staging one is removed") {
    {
      AtomicDir staging(target);
      write_bytes(staging.path() / "partial.txt", "partial");
    }
    REQUIRE(names_in(target) == std::vector<std::string>{"old.txt", "old_sub"});
    REQUIRE(names_in(dir.path()) == std::vector<std::string>{"step_100"});
  }
  SECTION("a new directory is created, with a trailing slash in the path") {
    fs::path fresh = dir.path() / "latest";
    AtomicDir staging(fresh.string() + "/");
    write_bytes(staging.path() / "a.txt", "a");
    staging.commit();
    REQUIRE(read_file(fresh / "a.txt") == "a");
    REQUIRE(names_in(dir.path()) == std::vector<std::string>{"latest", "step_100"});
  }
  SECTION("a file in the way is not replaced") {
    fs::path file = dir.path() / "plain";
    write_bytes(file, "x");
    AtomicDir staging(file);
    REQUIRE_THROWS_WITH(staging.commit(), Contains("it is not a directory"));
    REQUIRE(read_file(file) == "x");
  }
}

TEST_CASE("write_file_atomically replaces a file's contents", "[train]") {
  ScratchDir dir;
  fs::path file = dir.path() / "latest";
  write_file_atomically(file, "step_100");
  REQUIRE(read_file(file) == "step_100");
  write_file_atomically(file, "step_200\n");
  REQUIRE(read_file(file) == "step_200\n");
  {
    AtomicFile abandoned(file);
    abandoned.write("garbage", 7);
  }
  REQUIRE(read_file(file) == "step_200\n");
  REQUIRE(names_in(dir.path()) == std::vector<std::string>{"latest"});
}

// A real write failure: the temporary is a symlink to /dev/full (every write fails with
// ENOSPC), as on a full disk. The error names the file and the target keeps its old contents.
TEST_CASE("a write failing with ENOSPC is one clear error and replaces nothing", "[train]") {
  if (!fs::exists("/dev/full")) {  // Linux has it; a container without it cannot run this case
    WARN("no /dev/full: skipped");
    return;
  }
  ScratchDir dir;
  fs::path file = dir.path() / "trainer_state.json";
  write_file_atomically(file, "old");
  fs::path temp = dir.path() / ("trainer_state.json.tmp-" + std::to_string(::getpid()));
  fs::create_symlink("/dev/full", temp);
  REQUIRE_THROWS_WITH(write_file_atomically(file, "{\"step\": 2}\n"),
                      Contains("cannot write " + temp.string()) && Contains("No space left on device"));
  REQUIRE(read_file(file) == "old");
  REQUIRE(names_in(dir.path()) == std::vector<std::string>{"trainer_state.json"});  // the symlink removed

  fs::path weights = dir.path() / "model.safetensors";
  fs::create_symlink("/dev/full", dir.path() / ("model.safetensors.tmp-" + std::to_string(::getpid())));
  Tensor t = Tensor::from_vector(std::vector<float>{1, 2}, {2}, DType::f32);
  REQUIRE_THROWS_WITH(write_safetensors(weights, {{"w", t}}), Contains("No space left on device"));
  REQUIRE(!fs::exists(weights));
}

TEST_CASE("write_safetensors returns the size of the file it wrote", "[train]") {
  ScratchDir dir;
  Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}, DType::f32);
  FileDigest written = write_safetensors(dir.path() / "a.safetensors", {{"w", t}}, {{"format", "x"}});
  REQUIRE(written.num_bytes == fs::file_size(dir.path() / "a.safetensors"));
  // The checksum is of the bytes on disk, and reading the file back with_checksum agrees.
  std::ifstream in(dir.path() / "a.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(written.crc32c == crc32c(bytes.data(), bytes.size()));
  REQUIRE(read_safetensors(dir.path() / "a.safetensors", true).digest == written);
}

}  // namespace
}  // namespace moe

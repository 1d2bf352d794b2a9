// CRC-32C against the published check values (RFC 3720 B.4) and the fast path against the table.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "src/util/crc32c.h"

using namespace moe;

TEST_CASE("crc32c matches the standard check values", "[util]") {
  const std::string digits = "123456789";
  CHECK(crc32c(digits.data(), digits.size()) == 0xE3069283u);
  std::vector<unsigned char> zeros(32, 0x00), ones(32, 0xFF), ascending(32);
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<unsigned char>(i);
  CHECK(crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), ones.size()) == 0x62A8AB43u);
  CHECK(crc32c(ascending.data(), ascending.size()) == 0x46DD794Eu);
  CHECK(crc32c(nullptr, 0) == 0u);
  CHECK(crc32c_hex(0xE3069283u) == "e3069283");
  CHECK(crc32c_hex(0x1u) == "00000001");
}

TEST_CASE("crc32c streams in pieces and agrees with the table reference", "[util]") {
  std::mt19937 rng(7);
  for (size_t size : {1u, 7u, 8u, 19u, 989u, 4096u}) {
    std::vector<unsigned char> bytes(size);
    for (auto& b : bytes) b = static_cast<unsigned char>(rng());
    const uint32_t whole = crc32c(bytes.data(), bytes.size());
    CHECK(whole == crc32c_reference(bytes.data(), bytes.size()));
    Crc32c pieces;
    for (size_t begin = 0; begin < size; begin += 5) pieces.update(bytes.data() + begin, std::min<size_t>(5, size - begin));
    CHECK(pieces.value() == whole);
    bytes[size / 2] ^= 0x10;  // one flipped bit changes the checksum
    CHECK(crc32c(bytes.data(), bytes.size()) != whole);
  }
}

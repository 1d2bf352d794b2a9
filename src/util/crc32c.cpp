// CRC-32C: the SSE4.2 crc32 instruction 8 bytes at a time when compiled for it (-march=native on
// x86), otherwise a byte-wise table of the reflected polynomial 0x82F63B78. Both agree bit for bit.
#include "src/util/crc32c.h"

#include <array>
#include <cstdio>
#include <cstring>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace moe {

namespace {

const std::array<uint32_t, 256>& crc32c_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

uint32_t table_update(uint32_t c, const unsigned char* p, size_t num_bytes) {
  const auto& table = crc32c_table();
  for (; num_bytes > 0; --num_bytes, ++p) c = table[(c ^ *p) & 0xFFu] ^ (c >> 8);
  return c;
}

}  // namespace

void Crc32c::update(const void* data, size_t num_bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = state_;
#if defined(__SSE4_2__)
  uint64_t c64 = c;
  for (; num_bytes >= 8; num_bytes -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c64 = _mm_crc32_u64(c64, word);
  }
  c = static_cast<uint32_t>(c64);
  for (; num_bytes > 0; --num_bytes, ++p) c = _mm_crc32_u8(c, *p);
#else
  c = table_update(c, p, num_bytes);
#endif
  state_ = c;
}

uint32_t crc32c(const void* data, size_t num_bytes) {
  Crc32c crc;
  crc.update(data, num_bytes);
  return crc.value();
}

uint32_t crc32c_reference(const void* data, size_t num_bytes) {
  return ~table_update(0xFFFFFFFFu, static_cast<const unsigned char*>(data), num_bytes);
}

std::string crc32c_hex(uint32_t value) {
  char text[9];
  std::snprintf(text, sizeof(text), "%08x", value);
  return text;
}

}  // namespace moe

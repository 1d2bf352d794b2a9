// CRC-32C (Castagnoli), the checksum of checkpoint files: hardware-accelerated where the CPU has
// SSE4.2, a table otherwise. Streaming: feed the bytes in pieces, in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

// The running checksum of everything passed to update(); value() after any number of updates.
class Crc32c {
 public:
  void update(const void* data, size_t num_bytes);
  uint32_t value() const { return ~state_; }

 private:
  uint32_t state_ = 0xFFFFFFFFu;
};

uint32_t crc32c(const void* data, size_t num_bytes);
// The same checksum by the byte-wise table alone: the reference the fast path is tested against.
uint32_t crc32c_reference(const void* data, size_t num_bytes);
// "e3069283": eight lowercase hex digits, the form checkpoints record.
std::string crc32c_hex(uint32_t value);

}  // namespace moe

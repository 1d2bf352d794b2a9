// Element types and devices of tensors, with sizes and printable names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

enum class DType : uint8_t { f32, f64, bf16, i32, i64 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(const std::string& name);  // throws on an unknown name
inline bool is_floating(DType d) { return d == DType::f32 || d == DType::f64 || d == DType::bf16; }

enum class DeviceKind : uint8_t { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int ordinal = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int ordinal = 0) { return {DeviceKind::cuda, ordinal}; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

// bf16 <-> f32 on the host (round to nearest even), used by tests, checkpoints and casts.
uint16_t f32_to_bf16_bits(float value);
float bf16_bits_to_f32(uint16_t bits);

}  // namespace moe

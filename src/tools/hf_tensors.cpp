// Reading and writing Hugging Face safetensors checkpoints (single file or sharded with an index)
// independently of the engine's own checkpoint reader, which holds no f16.
#include "src/tools/hf_tensors.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "src/io/atomic_dir.h"
#include "src/tensor/dtype.h"
#include "src/util/check.h"
#include "src/util/mapped_file.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

int64_t dtype_bytes(HfDType d) { return d == HfDType::f32 ? 4 : 2; }

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// Reads the tensors named in `wanted` (all when empty) of one safetensors file into out.
void read_file(const fs::path& path, const std::set<std::string>& wanted, std::map<std::string, HfTensor>& out) {
  MappedFile file(path, "Hugging Face checkpoint");
  const unsigned char* p = file.data();
  const uint64_t size = file.size();
  MOE_CHECK(size >= 8, "Hugging Face checkpoint ", path.string(), " is truncated (", size, " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | p[i];
  MOE_CHECK(header_len <= size - 8, "Hugging Face checkpoint ", path.string(), " is truncated (header of ",
            header_len, " bytes in a ", size, "-byte file)");
  nlohmann::json header = nlohmann::json::parse(p + 8, p + 8 + header_len, nullptr, false);
  MOE_CHECK(header.is_object(), "Hugging Face checkpoint ", path.string(), ": the header is not a JSON object");
  const uint64_t data_start = 8 + header_len, data_bytes = size - data_start;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__" || (!wanted.empty() && wanted.count(name) == 0)) continue;
    MOE_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") && entry.contains("data_offsets"),
              "Hugging Face checkpoint ", path.string(), ": tensor '", name, "' lacks dtype, shape or data_offsets");
    HfTensor t;
    const std::string dtype = entry["dtype"].get<std::string>();
    MOE_CHECK(dtype == "F32" || dtype == "BF16" || dtype == "F16", "Hugging Face checkpoint ", path.string(),
              ": tensor '", name, "' has dtype ", dtype, " (F32, BF16 and F16 are read)");
    t.dtype = hf_dtype_from_name(dtype);
    t.shape = entry["shape"].get<std::vector<int64_t>>();
    const auto offsets = entry["data_offsets"].get<std::vector<uint64_t>>();
    const int64_t n = element_count(t.shape);
    MOE_CHECK(offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_bytes &&
                  offsets[1] - offsets[0] == static_cast<uint64_t>(n * dtype_bytes(t.dtype)),
              "Hugging Face checkpoint ", path.string(), ": tensor '", name, "' has data offsets outside the file or "
              "not matching its shape and dtype");
    const unsigned char* src = p + data_start + offsets[0];
    t.values.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      if (t.dtype == HfDType::f32) {
        std::memcpy(&t.values[static_cast<size_t>(i)], src + 4 * i, 4);
      } else {
        uint16_t bits = 0;
        std::memcpy(&bits, src + 2 * i, 2);
        t.values[static_cast<size_t>(i)] = t.dtype == HfDType::bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
      }
    }
    out[name] = std::move(t);
  }
}

}  // namespace

HfDType hf_dtype_from_name(const std::string& name) {
  if (name == "F32" || name == "float32") return HfDType::f32;
  if (name == "BF16" || name == "bfloat16") return HfDType::bf16;
  if (name == "F16" || name == "float16") return HfDType::f16;
  MOE_FAIL("unsupported Hugging Face dtype '", name, "' (float32, bfloat16 or float16)");
}

const char* hf_dtype_safetensors_name(HfDType dtype) {
  switch (dtype) {
    case HfDType::f32: return "F32";
    case HfDType::bf16: return "BF16";
    case HfDType::f16: return "F16";
  }
  return "?";
}

const char* hf_dtype_torch_name(HfDType dtype) {
  switch (dtype) {
    case HfDType::f32: return "float32";
    case HfDType::bf16: return "bfloat16";
    case HfDType::f16: return "float16";
  }
  return "?";
}

float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
    return sign ? -v : v;
  }
  const uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((exp + 112) << 23) | (mant << 13));
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t f32_to_f16_bits(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {  // a subnormal half: value * 2^24 rounded to an integer
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // a carry into the exponent rounds to inf
  return static_cast<uint16_t>(sign | half);
}

std::map<std::string, HfTensor> read_hf_tensors(const fs::path& dir) {
  std::map<std::string, HfTensor> out;
  const fs::path index = dir / "model.safetensors.index.json", single = dir / "model.safetensors";
  if (!fs::exists(index)) {
    MOE_CHECK(fs::is_regular_file(single), "Hugging Face directory ", dir.string(),
              " has neither model.safetensors nor model.safetensors.index.json");
    read_file(single, {}, out);
    return out;
  }
  std::ifstream in(index);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  MOE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index.string(),
            ": not JSON with a \"weight_map\" object");
  std::map<std::string, std::set<std::string>> by_shard;
  for (const auto& [name, shard] : j["weight_map"].items()) {
    MOE_CHECK(shard.is_string(), index.string(), ": weight_map[\"", name, "\"] is not a file name");
    by_shard[shard.get<std::string>()].insert(name);
  }
  for (const auto& [shard, names] : by_shard) {
    MOE_CHECK(shard.find('/') == std::string::npos, index.string(), ": shard '", shard, "' is not a file in ",
              dir.string());
    MOE_CHECK(fs::is_regular_file(dir / shard), index.string(), " lists shard '", shard, "', which does not exist");
    read_file(dir / shard, names, out);
    for (const std::string& name : names) {
      MOE_CHECK(out.count(name) > 0, index.string(), " maps '", name, "' to ", shard, ", which lacks it");
    }
  }
  return out;
}

void write_hf_tensors(const fs::path& path, const std::map<std::string, HfTensor>& tensors, HfDType dtype) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(element_count(t.shape) * dtype_bytes(dtype));
    MOE_CHECK(t.values.size() == static_cast<size_t>(element_count(t.shape)), "write_hf_tensors: '", name,
              "' has ", t.values.size(), " values for its shape");
    header[name] = {{"dtype", hf_dtype_safetensors_name(dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::string blob(8, '\0');
  for (int i = 0; i < 8; ++i) blob[static_cast<size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  blob += text;
  blob.reserve(blob.size() + offset);
  for (const auto& [name, t] : tensors) {
    for (float v : t.values) {
      if (dtype == HfDType::f32) {
        blob.append(reinterpret_cast<const char*>(&v), 4);
      } else {
        const uint16_t bits = dtype == HfDType::bf16 ? f32_to_bf16_bits(v) : f32_to_f16_bits(v);
        blob.append(reinterpret_cast<const char*>(&bits), 2);
      }
    }
  }
  write_file_atomically(path, blob);
}

}  // namespace moe

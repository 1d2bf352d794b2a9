// safetensors writer and header validation (the memory-mapped reader is safetensors_reader.cpp).
// The validation trusts nothing in the file: every length, offset and field is checked before use.
#include "src/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "src/io/atomic_dir.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace moe {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

constexpr const char* k_metadata_key = "__metadata__";
constexpr size_t k_header_alignment = 8;
constexpr size_t k_max_header_depth = 64;      // real headers nest 3 deep
constexpr size_t k_max_quoted_chars = 80;      // untrusted values quoted in messages are cut here
constexpr size_t k_max_parser_chars = 240;     // the JSON parser's message quotes the bad token

// Deepest nesting of JSON arrays and objects in `text`, brackets inside strings ignored. Checked
// before parsing, so a hostile header nested 100,000 deep never reaches recursive code.
size_t json_nesting_depth(const std::string& text) {
  size_t depth = 0;
  size_t deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// An untrusted value or message for an error line: at most `limit` characters.
std::string clipped(std::string text, size_t limit = k_max_quoted_chars) {
  if (text.size() > limit) text = text.substr(0, limit - 3) + "...";
  return text;
}

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
  }
  MOE_FAIL("no safetensors name for dtype ", static_cast<int>(dtype));
}

bool dtype_from_safetensors(const std::string& name, DType& dtype) {
  for (DType d : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
    if (name == safetensors_dtype(d)) {
      dtype = d;
      return true;
    }
  }
  return false;
}

uint64_t read_u64_le(const unsigned char* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// One header entry's fields, with the problem named relative to the tensor.
SafetensorsEntry parse_entry(const std::string& where, const std::string& name, const json& value) {
  std::string what = "corrupt checkpoint " + where + ": tensor '" + name + "'";
  MOE_CHECK(value.is_object(), what, " is not a JSON object");
  SafetensorsEntry entry;
  entry.name = name;
  MOE_CHECK(value.contains("dtype") && value["dtype"].is_string(), what, " has no string \"dtype\"");
  std::string dtype = value["dtype"].get<std::string>();
  MOE_CHECK(dtype_from_safetensors(dtype, entry.dtype), what, " has unsupported dtype \"", dtype,
            "\" (this engine reads F32, F64, BF16, I32, I64)");
  MOE_CHECK(value.contains("shape") && value["shape"].is_array(), what, " has no \"shape\" array");
  uint64_t numel = 1;
  for (const json& dim : value["shape"]) {
    MOE_CHECK(dim.is_number_unsigned(), what, " has a shape entry that is not a non-negative integer: ",
              clipped(dim.dump()));
    uint64_t d = dim.get<uint64_t>();
    MOE_CHECK(d <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                  (d == 0 || numel <= std::numeric_limits<uint64_t>::max() / d / 8),
              what, " has an impossibly large shape ", clipped(value["shape"].dump()));
    numel *= d;
    entry.shape.push_back(static_cast<int64_t>(d));
  }
  MOE_CHECK(entry.shape.size() <= 4, what, " has ", entry.shape.size(), " dims; tensors have at most 4");
  const json& offsets = value.contains("data_offsets") ? value["data_offsets"] : json();
  MOE_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                offsets[1].is_number_unsigned(),
            what, " needs \"data_offsets\" as two non-negative integers");
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  MOE_CHECK(entry.begin <= entry.end, what, " has data_offsets [", entry.begin, ", ", entry.end,
            "] that run backwards");
  uint64_t expected = numel * dtype_size(entry.dtype);
  MOE_CHECK(entry.end - entry.begin == expected, what, " spans ", entry.end - entry.begin, " bytes but ", dtype,
            " ", shape_str(entry.shape), " needs ", expected);
  return entry;
}

// Offsets must tile the data section exactly: within it, no overlaps, no gaps, nothing after.
void check_layout(const std::string& where, std::vector<SafetensorsEntry>& entries, uint64_t data_bytes) {
  std::stable_sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (const auto& e : entries) {
    MOE_CHECK(e.end <= data_bytes, "checkpoint truncated: ", where, ": tensor '", e.name, "' ends at data byte ",
              e.end, " but the file holds only ", data_bytes, " data bytes");
  }
  uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const auto& e : entries) {
    if (e.begin == e.end) continue;  // empty tensors occupy no bytes
    MOE_CHECK(e.begin >= covered, "corrupt checkpoint ", where, ": tensors '", previous->name, "' and '", e.name,
              "' overlap (data bytes ", e.begin, " to ", covered, ")");
    MOE_CHECK(e.begin == covered, "corrupt checkpoint ", where, ": data bytes ", covered, " to ", e.begin,
              " belong to no tensor");
    covered = e.end;
    previous = &e;
  }
  MOE_CHECK(covered == data_bytes, "corrupt checkpoint ", where, ": ", data_bytes - covered,
            " bytes after the last tensor's data");
}

}  // namespace

FileDigest write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const SafetensorsMetadata& metadata) {
  json header = json::object();
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    MOE_CHECK(!name.empty() && name != k_metadata_key, "write_safetensors ", path.string(), ": invalid tensor name '",
              name, "'");
    MOE_CHECK(!header.contains(name), "write_safetensors ", path.string(), ": tensor '", name, "' appears twice");
    MOE_CHECK(tensor.defined(), "write_safetensors ", path.string(), ": tensor '", name, "' is undefined");
    host.push_back(tensor.is_cuda() ? tensor.to(Device::cpu()) : tensor);
    uint64_t end = offset + tensor.nbytes();
    header[name] = {{"dtype", safetensors_dtype(tensor.dtype())},
                    {"shape", tensor.shape()},
                    {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata.empty()) header[k_metadata_key] = metadata;
  std::string text = header.dump();
  text.append((k_header_alignment - (8 + text.size()) % k_header_alignment) % k_header_alignment, ' ');
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  AtomicFile file(path);
  file.write(length, sizeof(length));
  file.write(text.data(), text.size());
  for (const Tensor& t : host) file.write(t.data(), t.nbytes());
  file.commit();
  return file.digest();
}

SafetensorsHeader parse_safetensors_header(const std::string& where, const unsigned char* file, uint64_t file_bytes) {
  MOE_CHECK(file_bytes >= 8, "checkpoint truncated: ", where, " has ", file_bytes,
            " bytes, fewer than the 8-byte header length");
  uint64_t header_bytes = read_u64_le(file);
  MOE_CHECK(header_bytes <= file_bytes - 8, "checkpoint truncated: ", where, " declares a ", header_bytes,
            "-byte header but only ", file_bytes - 8, " bytes follow");
  const std::string text(reinterpret_cast<const char*>(file) + 8, header_bytes);

  size_t depth = json_nesting_depth(text);
  MOE_CHECK(depth <= k_max_header_depth, "corrupt checkpoint ", where, ": header nests arrays/objects ", depth,
            " deep (at most ", k_max_header_depth, " allowed)");
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1E4611686
    MOE_FAIL("corrupt checkpoint ", where, ": header is not valid JSON (", clipped(e.what(), k_max_parser_chars), ")");
  }
  MOE_CHECK(header.is_object(), "corrupt checkpoint ", where, ": header is not a JSON object");

  SafetensorsHeader result;
  result.data_start = 8 + header_bytes;
  for (const auto& [key, value] : header.items()) {
    if (key == k_metadata_key) {
      MOE_CHECK(value.is_object(), "corrupt checkpoint ", where, ": __metadata__ is not a JSON object");
      for (const auto& [meta_key, meta_value] : value.items()) {
        MOE_CHECK(meta_value.is_string(), "corrupt checkpoint ", where, ": __metadata__ value of '", meta_key,
                  "' is not a string");
        result.metadata[meta_key] = meta_value.get<std::string>();
      }
      continue;
    }
    result.entries.push_back(parse_entry(where, key, value));
  }
  check_layout(where, result.entries, file_bytes - result.data_start);
  return result;
}

}  // namespace moe

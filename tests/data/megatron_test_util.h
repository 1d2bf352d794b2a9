// A Megatron .bin/.idx writer and reader written in the tests from the format specification
// (Megatron-Core's _IndexWriter/_IndexReader), sharing no code with src/data/indexed_dataset.*.
// Byte by byte: magic "MMIDIDX\0\0", u64 version 1, u8 dtype code, u64 S, u64 D, i32 lengths[S],
// i64 byte pointers[S], i64 document indices[D]; the .bin holds the sequences back to back.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/data/data_test_util.h"

namespace moe::test {

struct SpecDataset {
  uint8_t code = 8;                              // 8 = uint16, 4 = int32
  std::vector<std::vector<int64_t>> sequences;   // token values of each sequence
  std::vector<int64_t> document_indices = {0};   // 0, then the sequence count after each document
};

inline size_t spec_item_size(uint8_t code) { return code == 8 ? 2 : code == 4 ? 4 : 0; }

inline std::string spec_idx_bytes(const SpecDataset& d) {
  std::string out("MMIDIDX\0\0", 9);
  append_le<uint64_t>(out, 1);
  append_le<uint8_t>(out, d.code);
  append_le<uint64_t>(out, d.sequences.size());
  append_le<uint64_t>(out, d.document_indices.size());
  for (const auto& s : d.sequences) append_le<int32_t>(out, static_cast<int32_t>(s.size()));
  int64_t pointer = 0;
  for (const auto& s : d.sequences) {
    append_le<int64_t>(out, pointer);
    pointer += static_cast<int64_t>(s.size() * spec_item_size(d.code));
  }
  for (int64_t index : d.document_indices) append_le<int64_t>(out, index);
  return out;
}

inline std::string spec_bin_bytes(const SpecDataset& d) {
  std::string out;
  for (const auto& s : d.sequences) {
    for (int64_t v : s) {
      if (d.code == 8) append_le<uint16_t>(out, static_cast<uint16_t>(v));
      else append_le<int32_t>(out, static_cast<int32_t>(v));
    }
  }
  return out;
}

inline void write_spec_dataset(const std::string& prefix, const SpecDataset& d) {
  write_bytes(prefix + ".idx", spec_idx_bytes(d));
  write_bytes(prefix + ".bin", spec_bin_bytes(d));
}

// Parses a pair by the specification; throws std::runtime_error on anything off the format.
inline SpecDataset read_spec_dataset(const std::string& prefix) {
  const std::string idx = read_bytes(prefix + ".idx"), bin = read_bytes(prefix + ".bin");
  size_t at = 0;
  auto take = [&](auto value) {
    if (at + sizeof(value) > idx.size()) throw std::runtime_error("index cut short");
    std::memcpy(&value, idx.data() + at, sizeof(value));
    at += sizeof(value);
    return value;
  };
  if (idx.compare(0, 9, std::string("MMIDIDX\0\0", 9)) != 0) throw std::runtime_error("bad magic");
  at = 9;
  if (take(uint64_t{}) != 1) throw std::runtime_error("bad version");
  SpecDataset d;
  d.code = take(uint8_t{});
  const size_t item = spec_item_size(d.code);
  const uint64_t num_sequences = take(uint64_t{}), num_docs = take(uint64_t{});
  std::vector<int32_t> lengths;
  for (uint64_t i = 0; i < num_sequences; ++i) lengths.push_back(take(int32_t{}));
  std::vector<int64_t> pointers;
  for (uint64_t i = 0; i < num_sequences; ++i) pointers.push_back(take(int64_t{}));
  d.document_indices.clear();
  for (uint64_t i = 0; i < num_docs; ++i) d.document_indices.push_back(take(int64_t{}));
  if (at != idx.size()) throw std::runtime_error("index has trailing bytes");
  for (uint64_t i = 0; i < num_sequences; ++i) {
    std::vector<int64_t> s;
    for (int32_t k = 0; k < lengths[i]; ++k) {
      const size_t from = static_cast<size_t>(pointers[i]) + k * item;
      if (from + item > bin.size()) throw std::runtime_error("data file cut short");
      if (item == 2) {
        uint16_t v;
        std::memcpy(&v, bin.data() + from, 2);
        s.push_back(v);
      } else {
        int32_t v;
        std::memcpy(&v, bin.data() + from, 4);
        s.push_back(v);
      }
    }
    d.sequences.push_back(s);
  }
  return d;
}

}  // namespace moe::test

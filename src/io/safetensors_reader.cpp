// The memory-mapped safetensors reader: the header is validated once on open, tensors (or some
// of their rows) are copied out of the mapping on request, and the checksum is one sequential pass.
#include <algorithm>
#include <cstring>

#include "src/io/safetensors.h"
#include "src/util/crc32c.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

constexpr uint64_t k_checksum_chunk_bytes = uint64_t{64} << 20;  // read, checksummed, then released

}  // namespace

MappedSafetensors::MappedSafetensors(const fs::path& path)
    : file_(std::make_shared<const MappedFile>(path, "checkpoint")), path_(path.string()) {
  header_ = parse_safetensors_header(path_, file_->data(), file_->size());
  for (size_t i = 0; i < header_.entries.size(); ++i) index_.emplace(header_.entries[i].name, i);
}

uint64_t MappedSafetensors::num_bytes() const { return file_ ? file_->size() : 0; }

const SafetensorsEntry* MappedSafetensors::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.entries[it->second];
}

const SafetensorsEntry& MappedSafetensors::entry(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  MOE_CHECK(e != nullptr, "checkpoint ", path_, " has no tensor '", name, "'");
  return *e;
}

std::span<const unsigned char> MappedSafetensors::bytes(const SafetensorsEntry& e) const {
  MOE_CHECK(file_ != nullptr, "MappedSafetensors: no file is open (tensor '", e.name, "')");
  if (e.begin == e.end) return {};
  return {file_->data() + header_.data_start + e.begin, static_cast<size_t>(e.end - e.begin)};
}

Tensor MappedSafetensors::copy(const SafetensorsEntry& e) const {
  if (e.shape.empty()) {  // a scalar has no rows
    Tensor t = Tensor::empty(e.shape, e.dtype);
    std::memcpy(t.data(), bytes(e).data(), t.nbytes());  // a few bytes: a fault reads their page
    return t;
  }
  return copy_rows(e, 0, e.shape[0]);
}

Tensor MappedSafetensors::copy_rows(const SafetensorsEntry& e, int64_t row_begin, int64_t row_end) const {
  MOE_CHECK(!e.shape.empty() && row_begin >= 0 && row_begin <= row_end && row_end <= e.shape[0], "checkpoint ",
            path_, ": rows [", row_begin, ", ", row_end, ") asked of tensor '", e.name, "' of shape ",
            shape_str(e.shape));
  Shape shape = e.shape;
  shape[0] = row_end - row_begin;
  Tensor t = Tensor::empty(shape, e.dtype);
  if (t.nbytes() == 0) return t;
  const uint64_t row_bytes = (e.end - e.begin) / static_cast<uint64_t>(e.shape[0]);
  const uint64_t from = static_cast<uint64_t>(row_begin) * row_bytes;
  const uint64_t at = header_.data_start + e.begin + from;
  file_->copy_out(at, at + t.nbytes(), t.data());  // exactly these bytes, not kept resident twice
  return t;
}

std::map<std::string, Tensor> MappedSafetensors::copy_all() const {
  std::map<std::string, Tensor> tensors;
  for (const SafetensorsEntry& e : header_.entries) tensors.emplace(e.name, copy(e));
  return tensors;
}

FileDigest MappedSafetensors::digest(bool with_checksum) const {
  if (!with_checksum || file_ == nullptr) return {num_bytes(), 0};
  file_->advise_sequential();
  Crc32c crc;
  for (uint64_t at = 0; at < file_->size(); at += k_checksum_chunk_bytes) {
    const uint64_t end = std::min(file_->size(), at + k_checksum_chunk_bytes);
    crc.update(file_->data() + at, end - at);
    file_->release(at, end);
  }
  file_->advise_random();  // back to exact reads for the copies that follow
  return {file_->size(), crc.value()};
}

SafetensorsHeader read_safetensors_header(const fs::path& path) { return MappedSafetensors(path).header(); }

SafetensorsFile read_safetensors(const fs::path& path, bool with_checksum) {
  MappedSafetensors file(path);
  SafetensorsFile result;
  result.digest = file.digest(with_checksum);
  result.tensors = file.copy_all();
  result.metadata = file.metadata();
  return result;
}

}  // namespace moe

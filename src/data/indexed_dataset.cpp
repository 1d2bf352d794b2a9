// Megatron .bin/.idx pairs: the index parsed and validated from a read-only mapping, the data file
// checked against it and mapped as a TokenDataset, and the streaming writer. Layout: the header.
#include "src/data/indexed_dataset.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "src/util/check.h"
#include "src/util/mapped_file.h"

namespace moe::data {

namespace {

namespace fs = std::filesystem;

template <typename T>
T load_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void append_le(std::vector<unsigned char>& out, T value) {
  const auto* p = reinterpret_cast<const unsigned char*>(&value);
  out.insert(out.end(), p, p + sizeof(T));
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() > tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string hex_bytes(const unsigned char* bytes, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) {
    char hex[4];
    std::snprintf(hex, sizeof(hex), "%02x", bytes[i]);
    out += hex;
  }
  return out.empty() ? "none, the file is empty" : "0x" + out;
}

constexpr size_t k_chunk_entries = 1 << 16;  // index entries copied per write

}  // namespace

const char* megatron_dtype_name(uint8_t code) {
  static const char* names[] = {nullptr, "uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16"};
  return code < sizeof(names) / sizeof(names[0]) ? names[code] : nullptr;
}

MegatronDType megatron_dtype_for_vocab(int64_t vocab_size) {
  MOE_CHECK(vocab_size > 0, "megatron_dtype_for_vocab: vocab_size must be positive, got ", vocab_size);
  return vocab_size < 65500 ? MegatronDType::uint16 : MegatronDType::int32;
}

std::string megatron_idx_path(const std::string& prefix) { return prefix + ".idx"; }
std::string megatron_bin_path(const std::string& prefix) { return prefix + ".bin"; }

MegatronIndex::MegatronIndex(MegatronIndex&&) noexcept = default;
MegatronIndex& MegatronIndex::operator=(MegatronIndex&&) noexcept = default;
MegatronIndex::~MegatronIndex() = default;

MegatronIndex MegatronIndex::open(const std::string& idx_path) {
  MegatronIndex index;
  index.path_ = idx_path;
  index.file_ = std::make_unique<MappedFile>(idx_path, "Megatron index");
  const unsigned char* bytes = index.file_->data();
  const uint64_t size = index.file_->size();
  const std::string& p = idx_path;

  MOE_CHECK(size >= sizeof(k_megatron_magic) && std::memcmp(bytes, k_megatron_magic, sizeof(k_megatron_magic)) == 0,
            p, ": bad magic: not a Megatron index (expected \"MMIDIDX\\0\\0\"; first bytes are ",
            hex_bytes(bytes, std::min<uint64_t>(size, 9)), ")");
  MOE_CHECK(size >= k_megatron_header_bytes, p, ": truncated Megatron index: ", size, " bytes, shorter than the ",
            k_megatron_header_bytes, "-byte header");
  const auto version = load_le<uint64_t>(bytes + 9);
  MOE_CHECK(version == k_megatron_version, p, ": unsupported Megatron index version ", version, " (expected 1)");
  const uint8_t code = bytes[17];
  const char* name = megatron_dtype_name(code);
  MOE_CHECK(name != nullptr, p, ": unknown Megatron dtype code ", static_cast<int>(code), " (expected 1..8)");
  MOE_CHECK(code == static_cast<uint8_t>(MegatronDType::uint16) || code == static_cast<uint8_t>(MegatronDType::int32),
            p, ": dtype code ", static_cast<int>(code), " (", name,
            ") is not a token type this engine reads (expected 8 = uint16 or 4 = int32)");
  index.dtype_ = static_cast<MegatronDType>(code);

  const auto num_sequences = load_le<uint64_t>(bytes + 18);
  const auto num_doc_indices = load_le<uint64_t>(bytes + 26);
  const uint64_t room = size - k_megatron_header_bytes;
  // Each sequence takes 12 bytes (length and pointer), each document index 8: compared by
  // division first, so a huge count cannot overflow the expected size.
  const bool fits = num_sequences <= room / 12 && num_doc_indices <= (room - 12 * num_sequences) / 8;
  const uint64_t expected = fits ? k_megatron_header_bytes + 12 * num_sequences + 8 * num_doc_indices : 0;
  MOE_CHECK(fits, p, ": truncated Megatron index: the header says ", num_sequences, " sequences and ",
            num_doc_indices, " document indices, which take more than the ", size, " bytes of the file");
  if (size != expected) {
    const uint64_t extra = size - expected;
    MOE_CHECK(extra != num_sequences, p, ": ", extra,
              " bytes after the document indices, one per sequence: a multimodal index (sequence modes), "
              "which this engine does not read");
    MOE_FAIL(p, ": Megatron index has ", extra, " trailing bytes after its ", num_doc_indices, " document indices");
  }
  MOE_CHECK(num_doc_indices >= 1, p, ": Megatron index has no document indices (a valid one starts with 0)");
  index.num_sequences_ = static_cast<int64_t>(num_sequences);
  index.num_document_indices_ = static_cast<int64_t>(num_doc_indices);
  index.validate_arrays();
  return index;
}

// One sequential pass over the three arrays; the pages are dropped from this process afterwards.
void MegatronIndex::validate_arrays() {
  file_->advise_sequential();
  const std::string& p = path_;
  const uint64_t width = token_dtype_size(token_dtype());
  uint64_t total = 0;  // tokens of the sequences before i
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int32_t length = sequence_length(i);
    const int64_t pointer = sequence_pointer(i);
    MOE_CHECK(length >= 0, p, ": sequence ", i, " has a negative length ", length);
    MOE_CHECK(static_cast<uint64_t>(pointer) == total * width, p, ": sequence ", i, " starts at byte ", pointer,
              " of the data file, but the sequences before it end at byte ", total * width,
              " (sequences must lie back to back, as Megatron writes them)");
    MOE_CHECK(total <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / width - length, p,
              ": the sequence lengths add up to more tokens than a file can hold");
    total += static_cast<uint64_t>(length);
  }
  num_tokens_ = static_cast<int64_t>(total);
  int64_t previous = 0;
  for (int64_t d = 0; d < num_document_indices_; ++d) {
    const int64_t first = document_index(d);
    if (d == 0) {
      MOE_CHECK(first == 0, p, ": the first document index is ", first, ", not 0");
    } else {
      MOE_CHECK(first >= previous, p, ": document index ", d, " is ", first, ", before document index ", d - 1,
                " = ", previous, " (they must not decrease)");
    }
    previous = first;
  }
  MOE_CHECK(previous == num_sequences_, p, ": the last document index is ", previous, " but the index has ",
            num_sequences_, " sequences (it must end the last document at the last sequence)");
  file_->release(0, file_->size());
}

TokenDType MegatronIndex::token_dtype() const {
  return dtype_ == MegatronDType::uint16 ? TokenDType::u16 : TokenDType::u32;
}

int32_t MegatronIndex::sequence_length(int64_t i) const {
  MOE_CHECK(i >= 0 && i < num_sequences_, path_, ": sequence ", i, " out of range [0, ", num_sequences_, ")");
  return load_le<int32_t>(file_->data() + k_megatron_header_bytes + 4 * static_cast<uint64_t>(i));
}

int64_t MegatronIndex::sequence_pointer(int64_t i) const {
  MOE_CHECK(i >= 0 && i < num_sequences_, path_, ": sequence ", i, " out of range [0, ", num_sequences_, ")");
  const uint64_t base = k_megatron_header_bytes + 4 * static_cast<uint64_t>(num_sequences_);
  return load_le<int64_t>(file_->data() + base + 8 * static_cast<uint64_t>(i));
}

int64_t MegatronIndex::document_index(int64_t d) const {
  MOE_CHECK(d >= 0 && d < num_document_indices_, path_, ": document index ", d, " out of range [0, ",
            num_document_indices_, ")");
  const uint64_t base = k_megatron_header_bytes + 12 * static_cast<uint64_t>(num_sequences_);
  return load_le<int64_t>(file_->data() + base + 8 * static_cast<uint64_t>(d));
}

TokenDataset open_megatron_dataset(const std::string& prefix) {
  const std::string idx = megatron_idx_path(prefix), bin = megatron_bin_path(prefix);
  require_regular_file(idx, "cannot open Megatron index");
  require_regular_file(bin, "cannot open Megatron data file");
  const MegatronIndex index = MegatronIndex::open(idx);
  const uint64_t width = token_dtype_size(index.token_dtype());
  const uint64_t expected = static_cast<uint64_t>(index.num_tokens()) * width;
  std::error_code error;
  const uint64_t actual = fs::file_size(bin, error);
  MOE_CHECK(!error, bin, ": cannot stat Megatron data file: ", error.message());
  const char* type = megatron_dtype_name(static_cast<uint8_t>(index.dtype()));
  MOE_CHECK(actual >= expected, bin, ": truncated Megatron data file: ", actual, " bytes, but its index ", idx,
            " describes ", index.num_tokens(), " ", type, " tokens (", expected, " bytes)");
  MOE_CHECK(actual == expected, bin, ": Megatron data file does not match its index: ", actual, " bytes, but ", idx,
            " describes ", index.num_tokens(), " ", type, " tokens (", expected, " bytes)");
  return TokenDataset::open_raw(bin, index.token_dtype());
}

TokenDataset open_token_source(const std::string& path) {
  if (ends_with(path, ".idx")) return open_megatron_dataset(path.substr(0, path.size() - 4));
  if (ends_with(path, ".bin")) {
    const std::string prefix = path.substr(0, path.size() - 4);
    std::error_code error;
    if (fs::exists(megatron_idx_path(prefix), error)) return open_megatron_dataset(prefix);
  }
  std::error_code error;
  if (!fs::exists(path, error) &&
      (fs::exists(megatron_idx_path(path), error) || fs::exists(megatron_bin_path(path), error))) {
    return open_megatron_dataset(path);
  }
  return TokenDataset::open(path);
}

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, MegatronDType dtype)
    : prefix_(prefix), dtype_(dtype), bin_(megatron_bin_path(prefix)), lengths_(megatron_idx_path(prefix)) {
  MOE_CHECK(dtype == MegatronDType::uint16 || dtype == MegatronDType::int32, prefix,
            ": Megatron datasets are written as uint16 or int32 tokens");
}

void IndexedDatasetWriter::add_document(std::span<const uint32_t> tokens) {
  const uint32_t largest = dtype_ == MegatronDType::uint16 ? 0xFFFFu : 0x7FFFFFFFu;
  MOE_CHECK(tokens.size() <= 0x7FFFFFFFu, prefix_, ": document ", num_documents_, " has ", tokens.size(),
            " tokens, more than a Megatron sequence length (int32) holds");
  const size_t width = dtype_ == MegatronDType::uint16 ? 2 : 4;
  narrow_.resize(tokens.size() * width);
  for (size_t i = 0; i < tokens.size(); ++i) {
    MOE_CHECK(tokens[i] <= largest, prefix_, ": token ", num_tokens_ + static_cast<int64_t>(i), " = ", tokens[i],
              " does not fit in ", megatron_dtype_name(static_cast<uint8_t>(dtype_)));
    if (width == 2) {
      const auto narrow = static_cast<uint16_t>(tokens[i]);
      std::memcpy(narrow_.data() + 2 * i, &narrow, 2);
    }
  }
  if (width == 4 && !tokens.empty()) std::memcpy(narrow_.data(), tokens.data(), tokens.size() * 4);
  bin_.append(narrow_.data(), narrow_.size());
  const auto length = static_cast<int32_t>(tokens.size());
  lengths_.append(&length, sizeof(length));
  num_documents_ += 1;
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void IndexedDatasetWriter::commit() {
  StagedFile idx(megatron_idx_path(prefix_));
  std::vector<unsigned char> out(k_megatron_magic, k_megatron_magic + sizeof(k_megatron_magic));
  append_le<uint64_t>(out, k_megatron_version);
  append_le<uint8_t>(out, static_cast<uint8_t>(dtype_));
  const auto num_sequences = static_cast<uint64_t>(num_documents_);
  append_le<uint64_t>(out, num_sequences);
  append_le<uint64_t>(out, num_sequences + 1);  // one sequence per document: indices 0..S
  idx.append(out.data(), out.size());
  // The lengths back from the spool, then the pointers they imply, then the document indices.
  std::vector<int32_t> lengths;
  for (int pass = 0; pass < 2; ++pass) {
    uint64_t pointer = 0;
    for (uint64_t begin = 0; begin < num_sequences; begin += k_chunk_entries) {
      const uint64_t n = std::min<uint64_t>(k_chunk_entries, num_sequences - begin);
      lengths.resize(n);
      lengths_.read_at(begin * sizeof(int32_t), lengths.data(), n * sizeof(int32_t));
      out.clear();
      for (int32_t length : lengths) {
        if (pass == 0) append_le<int32_t>(out, length);
        if (pass == 1) append_le<int64_t>(out, static_cast<int64_t>(pointer));
        pointer += static_cast<uint64_t>(length) * (dtype_ == MegatronDType::uint16 ? 2 : 4);
      }
      idx.append(out.data(), out.size());
    }
  }
  for (uint64_t begin = 0; begin <= num_sequences; begin += k_chunk_entries) {
    out.clear();
    const uint64_t end = std::min<uint64_t>(begin + k_chunk_entries, num_sequences + 1);
    for (uint64_t d = begin; d < end; ++d) append_le<int64_t>(out, static_cast<int64_t>(d));
    idx.append(out.data(), out.size());
  }
  bin_.commit();
  idx.commit();
}

}  // namespace moe::data

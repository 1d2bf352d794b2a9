// Megatron-LM indexed datasets (Megatron-Core's IndexedDataset, what preprocess_data.py writes): a
// .bin of tokens and a .idx index named from one prefix. Reading, validation of one against the
// other, a streaming writer, and open_token_source, which opens any token file the trainer takes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "src/data/staged_file.h"
#include "src/data/token_shard.h"

namespace moe {
class MappedFile;
}

namespace moe::data {

// Megatron's DType codes (megatron/core/datasets/indexed_dataset.py). Token data is uint16 (for
// vocabularies below 65500) or int32; the other codes exist in the format but hold no tokens.
enum class MegatronDType : uint8_t {
  uint8 = 1, int8 = 2, int16 = 3, int32 = 4, int64 = 5, float64 = 6, float32 = 7, uint16 = 8
};
// "uint16", ...; nullptr for a code Megatron does not define.
const char* megatron_dtype_name(uint8_t code);
// What preprocess_data.py picks (DType.optimal_dtype): uint16 below 65500 pieces, else int32.
MegatronDType megatron_dtype_for_vocab(int64_t vocab_size);

// .idx layout, little-endian (byte offsets):
//   0   char[9]  magic "MMIDIDX\0\0"
//   9   u64      version = 1
//   17  u8       dtype code of the .bin tokens (MegatronDType)
//   18  u64      S, the number of sequences
//   26  u64      D, the number of document indices
//   34  i32[S]   sequence lengths, in tokens
//   ..  i64[S]   sequence pointers: byte offset of each sequence in the .bin
//   ..  i64[D]   document indices: the first sequence of each document; 0 first, S last
// The .bin is the sequences' tokens back to back, nothing else.
inline constexpr char k_megatron_magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr uint64_t k_megatron_version = 1;
inline constexpr size_t k_megatron_header_bytes = 34;

std::string megatron_idx_path(const std::string& prefix);  // prefix + ".idx"
std::string megatron_bin_path(const std::string& prefix);  // prefix + ".bin"

// A validated .idx, memory-mapped. open() checks the header, that the file size is exactly what
// S and D say, that lengths are non-negative, that the pointers lay the sequences back to back
// from byte 0 (what Megatron's writer always does), and that the document indices run from 0 to
// S without decreasing. Each error is one line naming the file.
class MegatronIndex {
 public:
  static MegatronIndex open(const std::string& idx_path);

  MegatronIndex(MegatronIndex&&) noexcept;
  MegatronIndex& operator=(MegatronIndex&&) noexcept;
  ~MegatronIndex();

  const std::string& path() const { return path_; }
  MegatronDType dtype() const { return dtype_; }
  TokenDType token_dtype() const;
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_document_indices_ - 1; }
  int64_t num_tokens() const { return num_tokens_; }  // the sum of the sequence lengths
  int32_t sequence_length(int64_t i) const;
  int64_t sequence_pointer(int64_t i) const;
  // The first sequence of document d; d = num_documents() gives S.
  int64_t document_index(int64_t d) const;

 private:
  MegatronIndex() = default;
  void validate_arrays();

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  MegatronDType dtype_ = MegatronDType::uint16;
  int64_t num_sequences_ = 0;
  int64_t num_document_indices_ = 0;
  int64_t num_tokens_ = 0;
};

// The dataset at `prefix` (prefix.bin, prefix.idx): the index validated, then the .bin's size
// checked against it ("truncated", or "does not match its index"), then the .bin mapped as a
// TokenDataset of format megatron. Documents are read back to back, as Megatron's GPT dataset does.
TokenDataset open_megatron_dataset(const std::string& prefix);

// Any token file the trainer reads, by name: "x.idx", "x.bin" with an "x.idx" beside it, or a
// prefix "x" with no file of its own but "x.idx" or "x.bin" beside it, is a Megatron dataset;
// anything else is a native or llm.c shard recognised by content (TokenDataset::open).
TokenDataset open_token_source(const std::string& path);

// Streams a Megatron dataset: each document is one sequence (preprocess_data.py without
// --split-sentences; the caller appends EOS, as --append-eod does). Tokens go to the .bin as they
// come and the lengths to an unlinked scratch file, so memory does not grow with the dataset;
// commit() writes the .idx, then renames both into place (.bin first).
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, MegatronDType dtype);  // uint16 or int32

  void add_document(std::span<const uint32_t> tokens);
  int64_t num_documents() const { return num_documents_; }
  int64_t num_tokens() const { return num_tokens_; }
  uint64_t bin_bytes() const { return bin_.size(); }
  void commit();

 private:
  std::string prefix_;
  MegatronDType dtype_;
  StagedFile bin_;
  SpoolFile lengths_;
  int64_t num_documents_ = 0;
  int64_t num_tokens_ = 0;
  std::vector<unsigned char> narrow_;
};

}  // namespace moe::data

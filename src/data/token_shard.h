// Token shards on disk: the native format (MOETOK header + u16/u32 tokens), llm.c .bin shards,
// atomic writers and a memory-mapped, read-only TokenDataset that opens either by its magic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "src/data/staged_file.h"

namespace moe::data {

// Width of one stored token. The values are the dtype codes written in the native header.
enum class TokenDType : uint32_t { u16 = 2, u32 = 4 };

size_t token_dtype_size(TokenDType dtype);
const char* token_dtype_name(TokenDType dtype);
// The narrowest dtype that holds ids in [0, vocab_size): u16 up to 65536, else u32.
TokenDType token_dtype_for_vocab(int64_t vocab_size);

// Native shard layout (little-endian), 64-byte header then `num_tokens` tokens:
//   bytes 0..7  magic "MOETOK\0\0"
//   bytes 8..11 u32 version (= 1)
//   bytes 12..15 u32 dtype code (TokenDType: 2 = u16, 4 = u32)
//   bytes 16..23 u64 token count
//   bytes 24..63 zero
inline constexpr char k_native_magic[8] = {'M', 'O', 'E', 'T', 'O', 'K', '\0', '\0'};
inline constexpr uint32_t k_native_version = 1;
inline constexpr size_t k_native_header_bytes = 64;

// llm.c shard layout: int32 header[256] = {20240520, version, count, 0...}, then tokens.
// Version 1 stores u16 tokens (GPT-2), version 2 stores u32 tokens (LLaMA 3).
inline constexpr int32_t k_llmc_magic = 20240520;
inline constexpr size_t k_llmc_header_bytes = 256 * sizeof(int32_t);

// megatron: a Megatron-LM .bin, tokens only; its .idx says how many and of what type
// (src/data/indexed_dataset.h).
enum class ShardFormat { native, llmc, megatron };
const char* shard_format_name(ShardFormat format);

// Streams a native shard: tokens are appended as they come (memory does not grow with the
// shard) and commit() writes the count into the header and renames "<path>.tmp.<pid>" over
// `path`, so readers never see a half-written file. Every token must fit in `dtype`.
class TokenShardWriter {
 public:
  TokenShardWriter(const std::string& path, TokenDType dtype);

  void append(std::span<const uint32_t> tokens);
  int64_t num_tokens() const { return num_tokens_; }
  uint64_t num_bytes() const { return file_.size(); }
  void commit();

 private:
  StagedFile file_;
  TokenDType dtype_;
  int64_t num_tokens_ = 0;
  std::vector<uint16_t> narrow_;  // u16 conversion buffer
};

// The whole shard at once, through TokenShardWriter.
void write_token_shard(const std::string& path, std::span<const uint32_t> tokens, TokenDType dtype);

// A read-only view of one shard file, memory-mapped for its whole lifetime. Move-only.
// open() recognises the format by content (the first bytes), not by the file name.
class TokenDataset {
 public:
  static TokenDataset open(const std::string& path);
  // Maps a file that holds tokens only (a Megatron .bin), their dtype known from elsewhere; its
  // size must be a whole number of tokens. Format megatron.
  static TokenDataset open_raw(const std::string& path, TokenDType dtype);

  TokenDataset() = default;
  TokenDataset(TokenDataset&& other) noexcept;
  TokenDataset& operator=(TokenDataset&& other) noexcept;
  TokenDataset(const TokenDataset&) = delete;
  TokenDataset& operator=(const TokenDataset&) = delete;
  ~TokenDataset();

  const std::string& path() const { return path_; }
  ShardFormat format() const { return format_; }
  TokenDType dtype() const { return dtype_; }
  int64_t size() const { return num_tokens_; }

  // Token i (bounds-checked). For bulk reads use copy_tokens or the typed pointers.
  uint32_t token(int64_t i) const;
  // out[k] = token(begin + k) for k < count, as int32 (the model's id type); checks the range
  // and that each id fits in int32.
  void copy_tokens(int64_t begin, int64_t count, int32_t* out) const;
  // One pass over the mapping (a vectorisable max per chunk): throws "<path>: token id V at
  // position P is outside the vocabulary (<key> = N)" for the first id >= vocab_size, so a bad id
  // anywhere in a shard is found when it is opened, not at the step that reads it.
  void check_ids_below(int64_t vocab_size, const std::string& key = "model.vocab_size") const;
  // Raw token arrays inside the mapping; each checks that the dtype matches.
  const uint16_t* data_u16() const;
  const uint32_t* data_u32() const;

 private:
  void release();
  // Maps `path` read-only into a dataset with no format yet; what names the file in messages.
  static TokenDataset map_file(const std::string& path, const char* what);

  std::string path_;
  ShardFormat format_ = ShardFormat::native;
  TokenDType dtype_ = TokenDType::u16;
  int64_t num_tokens_ = 0;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;  // first token inside the mapping
};

// Convenience for tests and tools: all tokens of a shard as u32.
std::vector<uint32_t> read_all_tokens(const TokenDataset& data);

}  // namespace moe::data

// Native and llm.c token shards: atomic writing, format detection and memory-mapped reading.
// Every error names the file and says what is wrong with it in one line.
#include "src/data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "src/util/check.h"

namespace moe::data {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian");

size_t token_dtype_size(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::u16: return 2;
    case TokenDType::u32: return 4;
  }
  MOE_FAIL("unknown token dtype code ", static_cast<uint32_t>(dtype));
}

const char* token_dtype_name(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::u16: return "u16";
    case TokenDType::u32: return "u32";
  }
  return "?";
}

TokenDType token_dtype_for_vocab(int64_t vocab_size) {
  MOE_CHECK(vocab_size > 0, "token_dtype_for_vocab: vocab_size must be positive, got ", vocab_size);
  return vocab_size <= 65536 ? TokenDType::u16 : TokenDType::u32;
}

const char* shard_format_name(ShardFormat format) {
  switch (format) {
    case ShardFormat::native: return "native";
    case ShardFormat::llmc: return "llm.c";
    case ShardFormat::megatron: return "Megatron .bin";
  }
  return "?";
}

namespace {

std::string errno_text() { return std::strerror(errno); }

template <typename T>
T load_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

TokenShardWriter::TokenShardWriter(const std::string& path, TokenDType dtype) : file_(path), dtype_(dtype) {
  token_dtype_size(dtype);  // refuses an unknown code
  const unsigned char header[k_native_header_bytes] = {};
  file_.append(header, sizeof(header));  // filled in by commit(), when the count is known
}

void TokenShardWriter::append(std::span<const uint32_t> tokens) {
  if (dtype_ == TokenDType::u32) {
    file_.append(tokens.data(), tokens.size() * sizeof(uint32_t));
  } else {
    narrow_.resize(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      MOE_CHECK(tokens[i] <= 0xFFFF, file_.path(), ": token ", num_tokens_ + static_cast<int64_t>(i), " = ",
                tokens[i], " does not fit in u16 (use u32)");
      narrow_[i] = static_cast<uint16_t>(tokens[i]);
    }
    file_.append(narrow_.data(), narrow_.size() * sizeof(uint16_t));
  }
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void TokenShardWriter::commit() {
  unsigned char header[k_native_header_bytes] = {};
  std::memcpy(header, k_native_magic, sizeof(k_native_magic));
  const uint32_t version = k_native_version;
  const uint32_t code = static_cast<uint32_t>(dtype_);
  const uint64_t count = static_cast<uint64_t>(num_tokens_);
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 12, &code, 4);
  std::memcpy(header + 16, &count, 8);
  file_.write_at(0, header, sizeof(header));
  file_.commit();
}

void write_token_shard(const std::string& path, std::span<const uint32_t> tokens, TokenDType dtype) {
  TokenShardWriter writer(path, dtype);
  writer.append(tokens);
  writer.commit();
}

TokenDataset TokenDataset::map_file(const std::string& path, const char* what) {
  require_regular_file(path, std::string("cannot open ") + what);  // before open(): a FIFO would block
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOE_CHECK(fd >= 0, path, ": cannot open ", what, ": ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    MOE_FAIL(path, ": cannot stat ", what, ": ", why);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    MOE_FAIL(path, ": not a regular file");
  }
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  void* mapping = nullptr;
  if (file_bytes > 0) {
    mapping = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  std::string map_error = mapping == MAP_FAILED ? errno_text() : "";
  ::close(fd);  // the mapping keeps the file alive
  MOE_CHECK(mapping != MAP_FAILED, path, ": mmap failed: ", map_error);

  TokenDataset ds;
  ds.path_ = path;
  ds.mapping_ = mapping;
  ds.mapping_bytes_ = file_bytes;
  return ds;
}

TokenDataset TokenDataset::open_raw(const std::string& path, TokenDType dtype) {
  TokenDataset ds = map_file(path, "token data file");
  const size_t width = token_dtype_size(dtype);
  MOE_CHECK(ds.mapping_bytes_ % width == 0, path, ": ", ds.mapping_bytes_, " bytes is not a whole number of ",
            token_dtype_name(dtype), " tokens");
  ds.format_ = ShardFormat::megatron;
  ds.dtype_ = dtype;
  ds.num_tokens_ = static_cast<int64_t>(ds.mapping_bytes_ / width);
  ds.tokens_ = static_cast<const unsigned char*>(ds.mapping_);
  return ds;
}

TokenDataset TokenDataset::open(const std::string& path) {
  TokenDataset ds = map_file(path, "token shard");
  const size_t file_bytes = ds.mapping_bytes_;
  const auto* bytes = static_cast<const unsigned char*>(ds.mapping_);

  // Recognise the format by its magic; anything else is reported with the bytes found.
  size_t header_bytes = 0;
  uint64_t count = 0;
  if (file_bytes >= sizeof(k_native_magic) && std::memcmp(bytes, k_native_magic, sizeof(k_native_magic)) == 0) {
    MOE_CHECK(file_bytes >= k_native_header_bytes, path, ": truncated native token shard: ", file_bytes,
              " bytes, shorter than the ", k_native_header_bytes, "-byte header");
    uint32_t version = load_le<uint32_t>(bytes + 8);
    uint32_t code = load_le<uint32_t>(bytes + 12);
    MOE_CHECK(version == k_native_version, path, ": unsupported native shard version ", version, " (expected ",
              k_native_version, ")");
    MOE_CHECK(code == 2 || code == 4, path, ": unknown token dtype code ", code, " (expected 2 = u16 or 4 = u32)");
    ds.format_ = ShardFormat::native;
    ds.dtype_ = static_cast<TokenDType>(code);
    count = load_le<uint64_t>(bytes + 16);
    header_bytes = k_native_header_bytes;
  } else if (file_bytes >= 4 && load_le<int32_t>(bytes) == k_llmc_magic) {
    MOE_CHECK(file_bytes >= k_llmc_header_bytes, path, ": truncated llm.c token shard: ", file_bytes,
              " bytes, shorter than the ", k_llmc_header_bytes, "-byte header");
    int32_t version = load_le<int32_t>(bytes + 4);
    int32_t n = load_le<int32_t>(bytes + 8);
    MOE_CHECK(version == 1 || version == 2, path, ": unsupported llm.c shard version ", version,
              " (expected 1 = u16 or 2 = u32 tokens)");
    MOE_CHECK(n >= 0, path, ": llm.c shard has a negative token count ", n);
    ds.format_ = ShardFormat::llmc;
    ds.dtype_ = version == 1 ? TokenDType::u16 : TokenDType::u32;
    count = static_cast<uint64_t>(n);
    header_bytes = k_llmc_header_bytes;
  } else {
    std::string found;
    for (size_t i = 0; i < std::min<size_t>(file_bytes, 8); ++i) {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%02x", bytes[i]);
      found += hex;
    }
    MOE_FAIL(path, ": bad magic: not a token shard (expected \"MOETOK\" or llm.c magic ", k_llmc_magic,
             "; first bytes are ", found.empty() ? "none, the file is empty" : "0x" + found, ")");
  }

  const size_t width = token_dtype_size(ds.dtype_);
  const size_t payload = file_bytes - header_bytes;
  MOE_CHECK(count <= payload / width, path, ": truncated ", shard_format_name(ds.format_),
            " token shard: header says ", count, " tokens (", count * width, " bytes) but only ", payload,
            " bytes follow the header");
  MOE_CHECK(count * width == payload, path, ": ", shard_format_name(ds.format_), " token shard has ",
            payload - count * width, " trailing bytes after its ", count, " tokens");
  MOE_CHECK(count <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), path, ": token count too large");
  ds.num_tokens_ = static_cast<int64_t>(count);
  ds.tokens_ = bytes + header_bytes;
  return ds;
}

TokenDataset::TokenDataset(TokenDataset&& other) noexcept { *this = std::move(other); }

TokenDataset& TokenDataset::operator=(TokenDataset&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    format_ = other.format_;
    dtype_ = other.dtype_;
    num_tokens_ = other.num_tokens_;
    mapping_ = other.mapping_;
    mapping_bytes_ = other.mapping_bytes_;
    tokens_ = other.tokens_;
    other.mapping_ = nullptr;
    other.mapping_bytes_ = 0;
    other.tokens_ = nullptr;
    other.num_tokens_ = 0;
  }
  return *this;
}

TokenDataset::~TokenDataset() { release(); }

void TokenDataset::release() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
  mapping_ = nullptr;
  mapping_bytes_ = 0;
  tokens_ = nullptr;
}

uint32_t TokenDataset::token(int64_t i) const {
  MOE_CHECK(i >= 0 && i < num_tokens_, path_, ": token index ", i, " out of range [0, ", num_tokens_, ")");
  if (dtype_ == TokenDType::u16) return load_le<uint16_t>(tokens_ + 2 * static_cast<size_t>(i));
  return load_le<uint32_t>(tokens_ + 4 * static_cast<size_t>(i));
}

void TokenDataset::copy_tokens(int64_t begin, int64_t count, int32_t* out) const {
  MOE_CHECK(begin >= 0 && count >= 0 && begin <= num_tokens_ - count, path_, ": token range [", begin, ", ",
            begin + count, ") out of range [0, ", num_tokens_, ")");
  if (dtype_ == TokenDType::u16) {
    const unsigned char* p = tokens_ + 2 * static_cast<size_t>(begin);
    for (int64_t k = 0; k < count; ++k) out[k] = load_le<uint16_t>(p + 2 * k);
    return;
  }
  const unsigned char* p = tokens_ + 4 * static_cast<size_t>(begin);
  for (int64_t k = 0; k < count; ++k) {
    uint32_t v = load_le<uint32_t>(p + 4 * k);
    MOE_CHECK(v <= static_cast<uint32_t>(std::numeric_limits<int32_t>::max()), path_, ": token ", begin + k, " = ",
              v, " does not fit in int32");
    out[k] = static_cast<int32_t>(v);
  }
}

namespace {

// The first index in [0, count) whose id is >= bound, or -1. A max per chunk keeps the hot loop
// branch-free (it vectorises); the mapping is page-aligned and the headers keep tokens aligned.
template <typename T>
int64_t first_id_at_least(const T* ids, int64_t count, uint64_t bound) {
  constexpr int64_t k_chunk = 1 << 16;
  for (int64_t begin = 0; begin < count; begin += k_chunk) {
    const int64_t n = std::min(k_chunk, count - begin);
    T largest = 0;
    for (int64_t k = 0; k < n; ++k) largest = std::max(largest, ids[begin + k]);
    if (largest < bound) continue;
    for (int64_t k = 0; k < n; ++k) {
      if (ids[begin + k] >= bound) return begin + k;
    }
  }
  return -1;
}

}  // namespace

void TokenDataset::check_ids_below(int64_t vocab_size, const std::string& key) const {
  MOE_CHECK(vocab_size > 0, path_, ": check_ids_below needs a positive vocabulary size, got ", vocab_size);
  const uint64_t bound = static_cast<uint64_t>(vocab_size);
  const int64_t bad = dtype_ == TokenDType::u16 ? first_id_at_least(data_u16(), num_tokens_, bound)
                                                : first_id_at_least(data_u32(), num_tokens_, bound);
  MOE_CHECK(bad < 0, path_, ": token id ", bad < 0 ? 0 : token(bad), " at position ", bad,
            " is outside the vocabulary (", key, " = ", vocab_size, "): the shard was made with a larger tokenizer");
}

const uint16_t* TokenDataset::data_u16() const {
  MOE_CHECK(dtype_ == TokenDType::u16, path_, ": tokens are ", token_dtype_name(dtype_), ", not u16");
  return reinterpret_cast<const uint16_t*>(tokens_);
}

const uint32_t* TokenDataset::data_u32() const {
  MOE_CHECK(dtype_ == TokenDType::u32, path_, ": tokens are ", token_dtype_name(dtype_), ", not u32");
  return reinterpret_cast<const uint32_t*>(tokens_);
}

std::vector<uint32_t> read_all_tokens(const TokenDataset& data) {
  std::vector<uint32_t> out(static_cast<size_t>(data.size()));
  for (int64_t i = 0; i < data.size(); ++i) out[static_cast<size_t>(i)] = data.token(i);
  return out;
}

}  // namespace moe::data

// Split writers over the native and Megatron writers of src/data, with shard rotation at document
// boundaries, and the clean-up of shards an earlier run left behind.
#include "src/tools/tokenize_output.h"

#include <cstdio>
#include <filesystem>
#include <regex>
#include <set>

#include "src/util/check.h"

namespace moe::data {

namespace fs = std::filesystem;

OutputFormat parse_output_format(const std::string& name) {
  if (name == "native") return OutputFormat::native;
  if (name == "megatron") return OutputFormat::megatron;
  MOE_FAIL("tokenize: unknown output format '", name, "' (expected native or megatron)");
}

SplitWriter::SplitWriter(std::string out_dir, std::string split, OutputFormat format, int64_t vocab_size,
                         int64_t shard_tokens)
    : out_dir_(std::move(out_dir)), split_(std::move(split)), format_(format), vocab_size_(vocab_size),
      shard_tokens_(shard_tokens) {
  MOE_CHECK(shard_tokens >= 0, "tokenize: shard_tokens must be >= 0 (0 = one file per split), got ", shard_tokens);
  open_shard();
}

SplitWriter::~SplitWriter() = default;

const char* SplitWriter::dtype_name() const {
  if (format_ == OutputFormat::native) return token_dtype_name(token_dtype_for_vocab(vocab_size_));
  return megatron_dtype_name(static_cast<uint8_t>(megatron_dtype_for_vocab(vocab_size_)));
}

void SplitWriter::open_shard() {
  std::string name = split_;
  if (shard_tokens_ > 0) {
    char suffix[32];
    std::snprintf(suffix, sizeof(suffix), "-%05zu", shards_.size());
    name += suffix;
  }
  const std::string path = (fs::path(out_dir_) / name).string();
  current_ = ShardRecord{};
  if (format_ == OutputFormat::native) {
    current_.name = name + ".tok";
    current_.files = {current_.name};
    native_ = std::make_unique<TokenShardWriter>(path + ".tok", token_dtype_for_vocab(vocab_size_));
  } else {
    current_.name = name;
    current_.files = {name + ".bin", name + ".idx"};
    megatron_ = std::make_unique<IndexedDatasetWriter>(path, megatron_dtype_for_vocab(vocab_size_));
  }
}

void SplitWriter::close_shard() {
  if (native_) {
    current_.bytes = native_->num_bytes() - k_native_header_bytes;
    native_->commit();
    native_.reset();
  } else {
    current_.bytes = megatron_->bin_bytes();
    megatron_->commit();
    megatron_.reset();
  }
  shards_.push_back(current_);
}

void SplitWriter::add_document(std::span<const uint32_t> tokens) {
  if (!native_ && !megatron_) open_shard();
  if (native_) native_->append(tokens);
  else megatron_->add_document(tokens);
  current_.documents += 1;
  current_.tokens += static_cast<int64_t>(tokens.size());
  num_documents_ += 1;
  num_tokens_ += static_cast<int64_t>(tokens.size());
  if (shard_tokens_ > 0 && current_.tokens >= shard_tokens_) close_shard();  // the next document opens one
}

void SplitWriter::finish() {
  // An open shard is committed even when empty, unless earlier shards already hold the split.
  if (native_ || megatron_) {
    if (current_.documents > 0 || shards_.empty()) {
      close_shard();
    } else {
      native_.reset();  // the unused temporary is removed
      megatron_.reset();
    }
  }
}

void remove_stale_shards(const std::string& out_dir, const std::string& split, const std::vector<ShardRecord>& kept) {
  std::set<std::string> keep;
  for (const auto& shard : kept) keep.insert(shard.files.begin(), shard.files.end());
  const std::regex shard_name(split + "-[0-9]{5,}\\.(tok|bin|idx)");
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(out_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, shard_name) && keep.count(name) == 0) {
      fs::remove(entry.path(), error);
    }
  }
}

}  // namespace moe::data

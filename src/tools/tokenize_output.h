// The outputs of `moe tokenize`: each split written as one file or as shards of whole documents,
// in the native format or as Megatron .bin/.idx pairs, and the manifest.json that lists them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "src/data/indexed_dataset.h"
#include "src/data/token_shard.h"

namespace moe::data {

enum class OutputFormat { native, megatron };
OutputFormat parse_output_format(const std::string& name);  // "native" | "megatron"

// One written shard. `name` is what data.train_path takes, relative to the output directory:
// "train.tok" or "train-00003.tok" (native), the prefix "train" or "train-00003" (Megatron).
struct ShardRecord {
  std::string name;
  std::vector<std::string> files;  // the files it consists of
  int64_t documents = 0;
  int64_t tokens = 0;
  uint64_t bytes = 0;              // of the token data
};

// Writes one split. With shard_tokens = 0 the split is one file ("<split>.tok" / "<split>");
// otherwise a shard is closed after the document that brings it to shard_tokens or more, so
// shards hold whole documents and are named "<split>-00000", "<split>-00001", ... An empty split
// still gets its (empty) file.
class SplitWriter {
 public:
  SplitWriter(std::string out_dir, std::string split, OutputFormat format, int64_t vocab_size, int64_t shard_tokens);
  ~SplitWriter();

  void add_document(std::span<const uint32_t> tokens);  // with its EOS
  void finish();                                         // commits the open shard
  const std::vector<ShardRecord>& shards() const { return shards_; }
  int64_t num_documents() const { return num_documents_; }
  int64_t num_tokens() const { return num_tokens_; }
  const char* dtype_name() const;

 private:
  void open_shard();
  void close_shard();

  std::string out_dir_, split_;
  OutputFormat format_;
  int64_t vocab_size_, shard_tokens_;
  std::unique_ptr<TokenShardWriter> native_;
  std::unique_ptr<IndexedDatasetWriter> megatron_;
  ShardRecord current_;
  std::vector<ShardRecord> shards_;
  int64_t num_documents_ = 0, num_tokens_ = 0;
};

// Removes "<split>-<digits>.tok|.bin|.idx" files in out_dir that no shard of this run names: the
// leftovers of an earlier run with more shards, which a glob over the directory would pick up.
void remove_stale_shards(const std::string& out_dir, const std::string& split, const std::vector<ShardRecord>& kept);

}  // namespace moe::data

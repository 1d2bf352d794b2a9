// A split of the training data (train or validation): one or more datasets, each an ordered list
// of memory-mapped shards, opened and checked together; errors name the dataset's config key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/data/token_shard.h"

namespace moe::data {

// What the config asks for (data.train / data.val entries, or data.train_path / val_path).
struct DatasetSpec {
  std::string key;                 // "data.train[1]": names the dataset in every error
  std::vector<std::string> paths;  // shard files or glob patterns (* ? [...]), in this order
  double weight = 1.0;             // the blending weight (training)
};

struct Dataset {
  std::string key;
  double weight = 1.0;
  std::vector<TokenDataset> shards;
  int64_t num_tokens() const;
};

// The shard files of `patterns`: a plain path as given, a glob pattern's matches sorted by name
// (byte order). A pattern that matches nothing is an error naming `key` and the pattern.
std::vector<std::string> expand_shard_paths(const std::string& key, const std::vector<std::string>& patterns);

class TokenSplit {
 public:
  // Opens every shard of every dataset. Errors ("<key> <file>: truncated ...", a missing file,
  // a pattern matching nothing, a dataset without shards) name the dataset's key.
  static TokenSplit open(const std::vector<DatasetSpec>& specs);

  const std::vector<Dataset>& datasets() const { return datasets_; }
  // Every shard, dataset after dataset.
  std::vector<const TokenDataset*> shards() const;
  int64_t num_tokens() const;
  // Every id of every shard below vocab_size (TokenDataset::check_ids_below), the error prefixed
  // with the dataset's key: "<key> <file>: token id V at position P is outside the vocabulary ...".
  void check_ids_below(int64_t vocab_size) const;

 private:
  std::vector<Dataset> datasets_;
};

}  // namespace moe::data

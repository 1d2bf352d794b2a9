// Opening a split: glob patterns expanded (sorted, so the shard order never depends on the file
// system), every shard mapped and checked, and each error prefixed with its dataset's key.
#include "src/data/token_split.h"

#include <glob.h>

#include <algorithm>
#include <utility>

#include "src/data/indexed_dataset.h"
#include "src/util/check.h"

namespace moe::data {

namespace {

bool is_pattern(const std::string& path) { return path.find_first_of("*?[") != std::string::npos; }

std::vector<std::string> glob_matches(const std::string& key, const std::string& pattern) {
  glob_t found{};
  const int rc = ::glob(pattern.c_str(), GLOB_NOSORT, nullptr, &found);
  std::vector<std::string> paths;
  for (size_t i = 0; rc == 0 && i < found.gl_pathc; ++i) paths.emplace_back(found.gl_pathv[i]);
  ::globfree(&found);
  MOE_CHECK(rc == 0 || rc == GLOB_NOMATCH, key, ": cannot list the files matching '", pattern, "' (glob error ", rc,
            ")");
  MOE_CHECK(!paths.empty(), key, ": '", pattern, "' matches no file");
  std::sort(paths.begin(), paths.end());
  return paths;
}

// Runs `open` and prefixes any error with "<key> ", the way every data error names its key.
template <typename Fn>
auto with_key(const std::string& key, Fn&& open) {
  try {
    return open();
  } catch (const Error& e) {
    throw Error(key + " " + e.what());
  }
}

}  // namespace

int64_t Dataset::num_tokens() const {
  int64_t total = 0;
  for (const TokenDataset& shard : shards) total += shard.size();
  return total;
}

std::vector<std::string> expand_shard_paths(const std::string& key, const std::vector<std::string>& patterns) {
  MOE_CHECK(!patterns.empty(), key, ": no shard paths (give path = \"...\" or paths = [...])");
  std::vector<std::string> paths;
  for (const std::string& pattern : patterns) {
    MOE_CHECK(!pattern.empty(), key, ": an empty shard path");
    if (!is_pattern(pattern)) {
      paths.push_back(pattern);
      continue;
    }
    std::vector<std::string> matches = glob_matches(key, pattern);
    paths.insert(paths.end(), matches.begin(), matches.end());
  }
  return paths;
}

TokenSplit TokenSplit::open(const std::vector<DatasetSpec>& specs) {
  MOE_CHECK(!specs.empty(), "token split: no datasets");
  TokenSplit split;
  for (const DatasetSpec& spec : specs) {
    Dataset dataset;
    dataset.key = spec.key;
    dataset.weight = spec.weight;
    for (const std::string& path : expand_shard_paths(spec.key, spec.paths)) {
      dataset.shards.push_back(with_key(spec.key, [&] { return open_token_source(path); }));
    }
    split.datasets_.push_back(std::move(dataset));
  }
  return split;
}

std::vector<const TokenDataset*> TokenSplit::shards() const {
  std::vector<const TokenDataset*> out;
  for (const Dataset& dataset : datasets_) {
    for (const TokenDataset& shard : dataset.shards) out.push_back(&shard);
  }
  return out;
}

int64_t TokenSplit::num_tokens() const {
  int64_t total = 0;
  for (const Dataset& dataset : datasets_) total += dataset.num_tokens();
  return total;
}

void TokenSplit::check_ids_below(int64_t vocab_size) const {
  for (const Dataset& dataset : datasets_) {
    for (const TokenDataset& shard : dataset.shards) {
      with_key(dataset.key, [&] {
        shard.check_ids_below(vocab_size);
        return 0;
      });
    }
  }
}

}  // namespace moe::data

// The epoch sampler: blend pick, epoch and in-epoch shuffle of each global sample, then the
// window's shard found by a binary search over the dataset's per-shard window counts.
#include "src/data/epoch_sampler.h"

#include <algorithm>

#include "src/util/check.h"

namespace moe::data {

namespace {

DatasetBlend make_blend(const TokenSplit& split) { return DatasetBlend(dataset_weights(split)); }

// A dataset's windows per shard as running starts; the last entry is its total. Throws when the
// dataset has none.
std::vector<int64_t> window_starts(const Dataset& dataset, int64_t seq_len) {
  std::vector<int64_t> first{0};
  for (const TokenDataset& shard : dataset.shards) {
    first.push_back(first.back() + (shard.size() > seq_len ? (shard.size() - 1) / seq_len : 0));
  }
  if (first.back() > 0) return first;
  const TokenDataset& one = dataset.shards.front();
  MOE_CHECK(dataset.shards.size() > 1, dataset.key, " ", one.path(), ": has ", one.size(),
            " tokens, fewer than seq_len + 1 = ", seq_len + 1, " needed for one training sequence");
  MOE_FAIL(dataset.key, ": its ", dataset.shards.size(), " shards (", one.path(), ", ...) hold ", dataset.num_tokens(),
           " tokens, but none has the seq_len + 1 = ", seq_len + 1,
           " tokens of one training sequence: the dataset is empty");
}

}  // namespace

std::vector<double> dataset_weights(const TokenSplit& split) {
  std::vector<double> weights;
  for (const Dataset& dataset : split.datasets()) weights.push_back(dataset.weight);
  return weights;
}

EpochSampler::EpochSampler(const TokenSplit& split, uint64_t seed, int64_t global_batch, int64_t seq_len)
    : TrainSampler(global_batch, seq_len), split_(&split), seed_(seed), blend_(make_blend(split)) {
  for (const Dataset& dataset : split.datasets()) first_sample_.push_back(window_starts(dataset, seq_len));
}

uint64_t EpochSampler::epoch_key(int64_t dataset, int64_t epoch) const {
  uint64_t h = mix64(seed_ ^ 0x6A09E667F3BCC909ull);
  h = mix64(h ^ static_cast<uint64_t>(dataset));
  return mix64(h + static_cast<uint64_t>(epoch) * 0x9E3779B97F4A7C15ull);
}

EpochSampler::Location EpochSampler::locate(int64_t global_sample) const {
  const BlendPick pick = blend_.pick(global_sample);
  const std::vector<int64_t>& first = first_sample_[static_cast<size_t>(pick.dataset)];
  const int64_t n = first.back();
  Location at;
  at.dataset = pick.dataset;
  at.epoch = pick.ordinal / n;
  const Permutation shuffle(static_cast<uint64_t>(n), epoch_key(pick.dataset, at.epoch));
  at.sample = static_cast<int64_t>(shuffle(static_cast<uint64_t>(pick.ordinal % n)));
  // The shard holding window `sample`: the last one whose first window is <= sample (shards
  // without windows share their successor's first window and are passed over).
  at.shard = std::upper_bound(first.begin(), first.end(), at.sample) - first.begin() - 1;
  at.start = (at.sample - first[static_cast<size_t>(at.shard)]) * seq_len();
  return at;
}

TokenWindows EpochSampler::sequences(int64_t step, int64_t first, int64_t count) const {
  check_sequences(step, first, count);
  TokenWindows w;
  w.rows = count;
  w.seq_len = seq_len();
  w.tokens.resize(static_cast<size_t>(count * w.window_length()));
  for (int64_t r = 0; r < count; ++r) {
    const Location at = locate(step * global_batch() + first + r);
    const Dataset& dataset = split_->datasets()[static_cast<size_t>(at.dataset)];
    dataset.shards[static_cast<size_t>(at.shard)].copy_tokens(at.start, w.window_length(),
                                                                w.tokens.data() + r * w.window_length());
    w.starts.push_back(at.start);
  }
  set_keys(w, step, first);
  return w;
}

std::vector<double> EpochSampler::epochs_after(int64_t samples) const {
  std::vector<double> epochs;
  for (int64_t d = 0; d < blend_.num_datasets(); ++d) {
    epochs.push_back(static_cast<double>(blend_.count(d, samples)) / static_cast<double>(num_samples(d)));
  }
  return epochs;
}

}  // namespace moe::data

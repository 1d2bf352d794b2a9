// The default training sampler (data.sampling = "epochs"): datasets blended by weight, each one
// read in fixed windows that are shuffled afresh every epoch; stateless, so restarts are exact.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/data/batch_sampler.h"
#include "src/data/sample_index.h"
#include "src/data/token_split.h"

namespace moe::data {

// A dataset's samples are the fixed windows of its shards, shard after shard: window w of a
// shard holds tokens [w*S, w*S + S + 1), so a shard of n tokens has (n - 1) / S of them (the
// evaluation windows' grid; a window never crosses a shard's end). Global sample g (sequence j of
// step s is g = s * global_batch + j) goes to dataset d = blend.pick(g) as its k-th sample; k is
// in epoch e = k / N_d at place i = k % N_d, and the window read is Permutation(N_d, key(seed,
// d, e))(i). So every epoch of a dataset reads each of its windows exactly once, in an order
// drawn afresh per epoch; everything is a function of (seed, g) and the split's sizes.
class EpochSampler final : public TrainSampler {
 public:
  // `split` must outlive the sampler. A dataset without one window (all its shards shorter than
  // seq_len + 1 tokens) is an error naming its key: the split is empty for it.
  EpochSampler(const TokenSplit& split, uint64_t seed, int64_t global_batch, int64_t seq_len);

  struct Location {
    int64_t dataset = 0, epoch = 0;
    int64_t sample = 0;  // the window within the dataset, [0, num_samples(dataset))
    int64_t shard = 0;   // the shard within the dataset
    int64_t start = 0;   // the window's first token within the shard
  };
  Location locate(int64_t global_sample) const;
  TokenWindows sequences(int64_t step, int64_t first, int64_t count) const override;

  int64_t num_samples(int64_t dataset) const { return first_sample_[static_cast<size_t>(dataset)].back(); }
  // How far the first `samples` global samples went into each dataset, in epochs (fractional).
  std::vector<double> epochs_after(int64_t samples) const;

 private:
  uint64_t epoch_key(int64_t dataset, int64_t epoch) const;
  const TokenSplit* split_;
  uint64_t seed_;
  DatasetBlend blend_;
  // Per dataset, per shard: the index of the shard's first window, then the dataset's total.
  std::vector<std::vector<int64_t>> first_sample_;
};

// The weights of a split's datasets, in order (what DatasetBlend takes).
std::vector<double> dataset_weights(const TokenSplit& split);

}  // namespace moe::data

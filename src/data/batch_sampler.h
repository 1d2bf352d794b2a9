// Training samplers (the global batch of a step as token windows, sliced per data-parallel rank),
// the random-window rule, and the sequential evaluation iterator over fixed windows of shards.
#pragma once

#include <cstdint>
#include <vector>

#include "src/data/sample_index.h"
#include "src/data/token_shard.h"

namespace moe::data {

// `rows` windows of seq_len + 1 consecutive shard tokens, row-major [rows * (seq_len + 1)]:
// the tokens of a sequence of seq_len positions and the one after it. The objective
// (src/model/objective.h) builds a batch's inputs and targets from them.
struct TokenWindows {
  int64_t rows = 0;
  int64_t seq_len = 0;
  std::vector<int32_t> tokens;
  std::vector<int64_t> starts;  // shard offset of each window's first token
  // Per window, the key of an objective's random choices (masked LM masking): a function of the
  // global sample alone (training: global_sample_key(step * global_batch + j); evaluation:
  // eval_window_key(window)), never of ranks or micro-batching, so masks are layout-independent
  // and a resumed run draws the ones it would have drawn.
  std::vector<uint64_t> keys;
  // Objectives that pair a window with text from elsewhere (next-sentence prediction): per window,
  // window_length() tokens from a random place of the data (add_partner_windows); else empty.
  std::vector<int32_t> partners;

  int64_t window_length() const { return seq_len + 1; }
  const int32_t* window(int64_t row) const { return tokens.data() + row * window_length(); }
  const int32_t* partner(int64_t row) const { return partners.data() + row * window_length(); }
};

// Fills w.partners: window r's partner is the window_length() tokens at a start drawn uniformly
// over every valid start of every shard (each shard weighted by its starts) from
// SplitMix64(mix64(seed ^ mix64(keys[r]))) alone, so like the keys it does not depend on the
// parallel layout or on what was read before. Shards shorter than a window have no start.
void add_partner_windows(TokenWindows& w, const std::vector<const TokenDataset*>& shards, uint64_t seed);

// The keys of TokenWindows::keys: training sample n (step * global_batch + j) and evaluation
// window w draw from disjoint streams.
uint64_t global_sample_key(int64_t sample);
uint64_t eval_window_key(int64_t window);

// How one data-parallel rank takes its part of the global batch. Only the data-parallel rank
// matters: tensor/pipeline/expert peers of one DP rank read the same data.
// Requires num_ranks * micro_batch * grad_accum == global_batch.
struct DataParallelSlice {
  int64_t rank = 0;
  int64_t num_ranks = 1;
  int64_t micro_batch = 1;  // sequences per micro-batch per rank
  int64_t grad_accum = 1;   // micro-batches per step per rank
};

// What the trainer draws batches from. Sequence j of the global batch of step s is global sample
// s * global_batch + j, chosen from (seed, s, j) only: never from the number of ranks, from
// micro-batching or from the sequences read before. Rank r takes the contiguous sequences
//   [r * m * a, (r + 1) * m * a) and its micro-batch k is [r*m*a + k*m, r*m*a + (k+1)*m),
// so concatenating the ranks' micro-batches in (rank, micro) order gives the global batch.
class TrainSampler {
 public:
  TrainSampler(int64_t global_batch, int64_t seq_len);
  virtual ~TrainSampler() = default;

  int64_t global_batch() const { return global_batch_; }
  int64_t seq_len() const { return seq_len_; }

  // The windows of global sequences [first, first + count) of `step`.
  virtual TokenWindows sequences(int64_t step, int64_t first, int64_t count) const = 0;
  // All global_batch sequences of `step` (what a single rank with no accumulation sees).
  TokenWindows global(int64_t step) const { return sequences(step, 0, global_batch_); }
  // Micro-batch `micro` (0 <= micro < grad_accum) of `slice.rank` at `step`.
  TokenWindows micro_batch(int64_t step, const DataParallelSlice& slice, int64_t micro) const;
  // Checks the slice against the global batch; the message names all four numbers.
  void check_slice(const DataParallelSlice& slice) const;

 protected:
  // Sequences [first, first + count) of `step` lie in the global batch (the message names them).
  void check_sequences(int64_t step, int64_t first, int64_t count) const;
  // Sets w.keys for sequences [first, first + w.rows) of `step`.
  void set_keys(TokenWindows& w, int64_t step, int64_t first) const;

 private:
  int64_t global_batch_;
  int64_t seq_len_;
};

// The random-window rule (data.sampling = "random_windows", the rule before epochs existed): one
// shard; sequence j of step s starts at
//   uniform in [0, size - (seq_len + 1)], drawn from SplitMix64(key(seed, s, j)),
// so windows may overlap and an epoch means nothing.
class BatchSampler final : public TrainSampler {
 public:
  // `data` must outlive the sampler. Throws if the shard is shorter than seq_len + 1 tokens.
  BatchSampler(const TokenDataset& data, uint64_t seed, int64_t global_batch, int64_t seq_len);

  // Shard offset of the first input token of global sequence `index` at `step`.
  int64_t sequence_start(int64_t step, int64_t index) const;
  TokenWindows sequences(int64_t step, int64_t first, int64_t count) const override;

 private:
  const TokenDataset* data_;
  uint64_t seed_;
  uint64_t num_starts_;  // size - seq_len: the number of valid start offsets
};

// The windows of seq_len + 1 tokens of `data` starting at `starts` (the objective's input).
TokenWindows read_windows(const TokenDataset& data, int64_t seq_len, std::vector<int64_t> starts);

// Fixed evaluation windows: window w of a shard holds tokens [w*S, w*S + S + 1) (S positions and
// the token after them; consecutive windows share one token), so a shard has (size - 1) / S
// windows; with several shards their windows follow one another in shard order. With num_ranks
// > 1, rank r evaluates windows r, r + N, r + 2N, ... and the window count is first cut to a
// multiple of N (and to max_windows when that is > 0) so every rank runs the same number of batches.
class EvalIterator {
 public:
  EvalIterator(const TokenDataset& data, int64_t batch_rows, int64_t seq_len, int64_t max_windows = 0,
               int64_t rank = 0, int64_t num_ranks = 1);
  // Several shards (outliving the iterator); a shard shorter than seq_len + 1 tokens has no window.
  EvalIterator(std::vector<const TokenDataset*> shards, int64_t batch_rows, int64_t seq_len,
               int64_t max_windows = 0, int64_t rank = 0, int64_t num_ranks = 1);

  int64_t num_windows() const { return num_windows_; }          // over all ranks
  int64_t windows_per_rank() const { return num_windows_ / num_ranks_; }
  int64_t num_batches() const;                                   // per rank
  // Fills the next batch of windows (the last may have fewer rows); false when the pass is over.
  bool next(TokenWindows& batch);
  void reset() { next_local_ = 0; }

 private:
  std::vector<const TokenDataset*> shards_;
  std::vector<int64_t> first_window_;  // per shard: the global index of its first window; then the total
  int64_t batch_rows_;
  int64_t seq_len_;
  int64_t rank_;
  int64_t num_ranks_;
  int64_t num_windows_ = 0;
  int64_t next_local_ = 0;  // index of this rank's next window among its own windows
};

}  // namespace moe::data

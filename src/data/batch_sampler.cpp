// Batch sampling: a global batch sliced over data-parallel ranks, the random-window rule (starts
// from a counter-keyed SplitMix64 stream per sequence) and evaluation windows over shards.
#include "src/data/batch_sampler.h"

#include <algorithm>
#include <utility>

#include "src/util/check.h"

namespace moe::data {

namespace {

// One independent stream per (seed, step, sequence index).
uint64_t sequence_key(uint64_t seed, int64_t step, int64_t index) {
  uint64_t h = mix64(seed + 0x9E3779B97F4A7C15ull);
  h = mix64(h ^ static_cast<uint64_t>(step));
  return mix64(h ^ static_cast<uint64_t>(index) ^ 0xD1B54A32D192ED03ull);
}

}  // namespace

uint64_t global_sample_key(int64_t sample) { return mix64(static_cast<uint64_t>(sample) ^ 0x6A09E667F3BCC909ull); }
uint64_t eval_window_key(int64_t window) { return mix64(static_cast<uint64_t>(window) ^ 0xBB67AE8584CAA73Bull); }

TokenWindows read_windows(const TokenDataset& data, int64_t seq_len, std::vector<int64_t> starts) {
  TokenWindows w;
  w.rows = static_cast<int64_t>(starts.size());
  w.seq_len = seq_len;
  w.tokens.resize(static_cast<size_t>(w.rows * w.window_length()));
  for (int64_t r = 0; r < w.rows; ++r) {
    data.copy_tokens(starts[static_cast<size_t>(r)], w.window_length(), w.tokens.data() + r * w.window_length());
  }
  w.starts = std::move(starts);
  return w;
}

void add_partner_windows(TokenWindows& w, const std::vector<const TokenDataset*>& shards, uint64_t seed) {
  MOE_CHECK(static_cast<int64_t>(w.keys.size()) == w.rows, "partner windows: ", w.keys.size(), " window keys for ",
            w.rows, " windows");
  const int64_t length = w.window_length();
  std::vector<uint64_t> first_start{0};  // per shard, its first start's index among all starts; then the total
  for (const TokenDataset* shard : shards) {
    first_start.push_back(first_start.back() + static_cast<uint64_t>(std::max<int64_t>(shard->size() - length + 1, 0)));
  }
  MOE_CHECK(first_start.back() > 0, "partner windows: no shard holds a window of ", length, " tokens");
  w.partners.resize(static_cast<size_t>(w.rows * length));
  for (int64_t r = 0; r < w.rows; ++r) {
    SplitMix64 rng(mix64(seed ^ mix64(w.keys[static_cast<size_t>(r)])));
    const uint64_t at = rng.below(first_start.back());
    const size_t shard = static_cast<size_t>(std::upper_bound(first_start.begin(), first_start.end(), at) -
                                             first_start.begin()) - 1;
    shards[shard]->copy_tokens(static_cast<int64_t>(at - first_start[shard]), length,
                               w.partners.data() + r * length);
  }
}

TrainSampler::TrainSampler(int64_t global_batch, int64_t seq_len) : global_batch_(global_batch), seq_len_(seq_len) {
  MOE_CHECK(global_batch > 0, "batch sampler: global batch must be positive, got ", global_batch);
  MOE_CHECK(seq_len > 0, "batch sampler: seq_len must be positive, got ", seq_len);
}

void TrainSampler::check_sequences(int64_t step, int64_t first, int64_t count) const {
  MOE_CHECK(step >= 0, "batch sampler: step must be >= 0, got ", step);
  MOE_CHECK(count > 0 && first >= 0 && first + count <= global_batch_, "batch sampler: sequences [", first, ", ",
            first + count, ") out of the global batch [0, ", global_batch_, ")");
}

void TrainSampler::set_keys(TokenWindows& w, int64_t step, int64_t first) const {
  w.keys.resize(static_cast<size_t>(w.rows));
  for (int64_t r = 0; r < w.rows; ++r) w.keys[static_cast<size_t>(r)] = global_sample_key(step * global_batch_ + first + r);
}

void TrainSampler::check_slice(const DataParallelSlice& slice) const {
  MOE_CHECK(slice.num_ranks > 0 && slice.micro_batch > 0 && slice.grad_accum > 0,
            "batch slice: num_ranks, micro_batch and grad_accum must be positive, got ", slice.num_ranks, ", ",
            slice.micro_batch, ", ", slice.grad_accum);
  MOE_CHECK(slice.rank >= 0 && slice.rank < slice.num_ranks, "batch slice: rank ", slice.rank,
            " out of range [0, ", slice.num_ranks, ")");
  MOE_CHECK(slice.num_ranks * slice.micro_batch * slice.grad_accum == global_batch_,
            "batch slice: data-parallel ranks (", slice.num_ranks, ") x micro_batch (", slice.micro_batch,
            ") x grad_accum (", slice.grad_accum, ") = ", slice.num_ranks * slice.micro_batch * slice.grad_accum,
            " must equal the global batch ", global_batch_);
}

TokenWindows TrainSampler::micro_batch(int64_t step, const DataParallelSlice& slice, int64_t micro) const {
  check_slice(slice);
  MOE_CHECK(micro >= 0 && micro < slice.grad_accum, "batch slice: micro-batch ", micro, " out of range [0, ",
            slice.grad_accum, ")");
  const int64_t first = slice.rank * slice.micro_batch * slice.grad_accum + micro * slice.micro_batch;
  return sequences(step, first, slice.micro_batch);
}

BatchSampler::BatchSampler(const TokenDataset& data, uint64_t seed, int64_t global_batch, int64_t seq_len)
    : TrainSampler(global_batch, seq_len), data_(&data), seed_(seed) {
  MOE_CHECK(data.size() >= seq_len + 1, data.path(), ": has ", data.size(),
            " tokens, fewer than seq_len + 1 = ", seq_len + 1, " needed for one training sequence");
  num_starts_ = static_cast<uint64_t>(data.size() - seq_len);
}

int64_t BatchSampler::sequence_start(int64_t step, int64_t index) const {
  MOE_CHECK(step >= 0, "batch sampler: step must be >= 0, got ", step);
  MOE_CHECK(index >= 0 && index < global_batch(), "batch sampler: sequence index ", index, " out of range [0, ",
            global_batch(), ")");
  SplitMix64 rng(sequence_key(seed_, step, index));
  return static_cast<int64_t>(rng.below(num_starts_));
}

TokenWindows BatchSampler::sequences(int64_t step, int64_t first, int64_t count) const {
  check_sequences(step, first, count);
  std::vector<int64_t> starts(static_cast<size_t>(count));
  for (int64_t r = 0; r < count; ++r) starts[static_cast<size_t>(r)] = sequence_start(step, first + r);
  TokenWindows w = read_windows(*data_, seq_len(), std::move(starts));
  set_keys(w, step, first);
  return w;
}

EvalIterator::EvalIterator(const TokenDataset& data, int64_t batch_rows, int64_t seq_len, int64_t max_windows,
                           int64_t rank, int64_t num_ranks)
    : EvalIterator(std::vector<const TokenDataset*>{&data}, batch_rows, seq_len, max_windows, rank, num_ranks) {}

EvalIterator::EvalIterator(std::vector<const TokenDataset*> shards, int64_t batch_rows, int64_t seq_len,
                           int64_t max_windows, int64_t rank, int64_t num_ranks)
    : shards_(std::move(shards)), batch_rows_(batch_rows), seq_len_(seq_len), rank_(rank), num_ranks_(num_ranks) {
  MOE_CHECK(batch_rows > 0, "eval iterator: batch rows must be positive, got ", batch_rows);
  MOE_CHECK(seq_len > 0, "eval iterator: seq_len must be positive, got ", seq_len);
  MOE_CHECK(num_ranks > 0 && rank >= 0 && rank < num_ranks, "eval iterator: rank ", rank, " out of range [0, ",
            num_ranks, ")");
  MOE_CHECK(max_windows >= 0, "eval iterator: max_windows must be >= 0, got ", max_windows);
  MOE_CHECK(!shards_.empty(), "eval iterator: no shards");
  int64_t all = 0, tokens = 0;
  for (const TokenDataset* shard : shards_) {
    first_window_.push_back(all);
    all += shard->size() > seq_len ? (shard->size() - 1) / seq_len : 0;
    tokens += shard->size();
  }
  first_window_.push_back(all);
  const TokenDataset& first = *shards_.front();
  if (shards_.size() == 1) {
    MOE_CHECK(all > 0, first.path(), ": has ", first.size(), " tokens, fewer than seq_len + 1 = ", seq_len + 1,
              " needed for one evaluation window");
  } else {
    MOE_CHECK(all > 0, shards_.size(), " shards (", first.path(), ", ...) hold ", tokens,
              " tokens but no shard has seq_len + 1 = ", seq_len + 1, " for one evaluation window");
  }
  int64_t windows = all;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  windows -= windows % num_ranks;
  MOE_CHECK(windows > 0, shards_.size() == 1 ? first.path() : std::to_string(shards_.size()) + " shards", ": ", all,
            " evaluation windows of ", seq_len, " tokens cannot be split over ", num_ranks, " ranks");
  num_windows_ = windows;
}

int64_t EvalIterator::num_batches() const { return (windows_per_rank() + batch_rows_ - 1) / batch_rows_; }

bool EvalIterator::next(TokenWindows& batch) {
  const int64_t local_total = windows_per_rank();
  if (next_local_ >= local_total) return false;
  const int64_t rows = std::min(batch_rows_, local_total - next_local_);
  batch = TokenWindows{};
  batch.rows = rows;
  batch.seq_len = seq_len_;
  batch.tokens.resize(static_cast<size_t>(rows * batch.window_length()));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t w = (next_local_ + r) * num_ranks_ + rank_;  // this rank's windows are r, r + N, ...
    const auto after = std::upper_bound(first_window_.begin(), first_window_.end(), w);
    const auto shard = static_cast<size_t>(after - first_window_.begin() - 1);
    const int64_t start = (w - first_window_[shard]) * seq_len_;
    shards_[shard]->copy_tokens(start, batch.window_length(), batch.tokens.data() + r * batch.window_length());
    batch.starts.push_back(start);
    batch.keys.push_back(eval_window_key(w));
  }
  next_local_ += rows;
  return true;
}

}  // namespace moe::data

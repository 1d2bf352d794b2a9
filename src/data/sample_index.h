// The training sample order, computed from (seed, global sample index) alone: SplitMix64, a
// keyed permutation (each epoch's shuffle) and the weighted blend of several datasets.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::data {

// The SplitMix64 output function (Steele, Lea, Flood 2014): a strong 64-bit mixer on its own.
uint64_t mix64(uint64_t z);

// SplitMix64: the engine's seeded, platform-independent generator.
struct SplitMix64 {
  uint64_t state;
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  uint64_t next();
  // Uniform in [0, bound) without modulo bias (Lemire's multiply-and-reject); bound > 0.
  uint64_t below(uint64_t bound);
};

// A bijection of [0, size) chosen by `key`: a 4-round Feistel network over the smallest even
// number of bits covering size, values >= size walked back into range (cycle walking, fewer than
// 4 rounds of the network on average). O(1) memory; any element directly.
class Permutation {
 public:
  Permutation(uint64_t size, uint64_t key);
  uint64_t size() const { return size_; }
  uint64_t operator()(uint64_t index) const;  // index < size

 private:
  uint64_t feistel(uint64_t x) const;
  uint64_t size_;
  int half_bits_ = 1;
  uint64_t round_keys_[4] = {};
};

// Where the blend sends global sample g: `dataset`, as that dataset's `ordinal`-th sample
// (counting from 0 every sample the blend sent there before g).
struct BlendPick {
  int64_t dataset = 0, ordinal = 0;
};

// The blend of datasets by weight. The datasets are the leaves of a balanced binary tree; the
// samples reaching a node go left or right in the Beatty sequence of the left share
// p = (left weights) / (node weights): of the first n arrivals, round(n p) go left. p is held in
// 2^-62 fixed point and the counts are integer arithmetic, so every platform agrees. Among the
// first n samples dataset d gets n w_d / W to within ceil(log2 D) samples, for every n (a short
// run sees the proportions too), and a sample's dataset and ordinal take O(log D) steps: no
// index is built or stored, and a run resumed at any sample continues the same order.
class DatasetBlend {
 public:
  // Weights positive and finite (validated by the config; checked again here).
  explicit DatasetBlend(const std::vector<double>& weights);
  int64_t num_datasets() const { return num_datasets_; }
  BlendPick pick(int64_t global_sample) const;
  // How many of the first n samples go to `dataset`.
  int64_t count(int64_t dataset, int64_t n) const;

 private:
  struct Node {
    int64_t lo = 0, mid = 0, hi = 0;  // datasets [lo, hi); [lo, mid) to the left
    uint64_t left_share = 0;          // p * 2^62
    int left = -1, right = -1;        // child nodes; -1 = a leaf (dataset lo)
  };
  int build(const std::vector<double>& weights, int64_t lo, int64_t hi);
  int64_t num_datasets_ = 0;
  std::vector<Node> nodes_;  // nodes_[0] is the root
};

}  // namespace moe::data

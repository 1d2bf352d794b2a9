// SplitMix64, the keyed Feistel permutation and the Beatty-sequence blend of datasets: pure
// integer functions of their inputs, so a sample's place never depends on the samples before it.
#include "src/data/sample_index.h"

#include <cmath>

#include "src/util/check.h"

namespace moe::data {

namespace {

constexpr int k_share_bits = 62;
constexpr uint64_t k_share_one = uint64_t{1} << k_share_bits;

// round(n p) for p = share / 2^62, n >= 0: the left arrivals among the first n.
int64_t left_count(int64_t n, uint64_t share) {
  const unsigned __int128 scaled = static_cast<unsigned __int128>(static_cast<uint64_t>(n)) * share;
  return static_cast<int64_t>((scaled + (k_share_one >> 1)) >> k_share_bits);
}

}  // namespace

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::next() {
  state += 0x9E3779B97F4A7C15ull;
  return mix64(state);
}

uint64_t SplitMix64::below(uint64_t bound) {
  MOE_CHECK(bound > 0, "SplitMix64::below: bound must be positive");
  unsigned __int128 m = static_cast<unsigned __int128>(next()) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(next()) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

Permutation::Permutation(uint64_t size, uint64_t key) : size_(size) {
  MOE_CHECK(size > 0 && size <= (uint64_t{1} << 62), "permutation: size ", size, " outside [1, 2^62]");
  int bits = 2;
  while (bits < 62 && (uint64_t{1} << bits) < size) bits += 2;
  half_bits_ = bits / 2;
  for (int r = 0; r < 4; ++r) round_keys_[r] = mix64(key + static_cast<uint64_t>(r + 1) * 0x9E3779B97F4A7C15ull);
}

uint64_t Permutation::feistel(uint64_t x) const {
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  uint64_t left = x >> half_bits_, right = x & mask;
  for (uint64_t k : round_keys_) {
    const uint64_t next = left ^ (mix64(right ^ k) & mask);
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

uint64_t Permutation::operator()(uint64_t index) const {
  MOE_CHECK(index < size_, "permutation: index ", index, " outside [0, ", size_, ")");
  // The network permutes [0, 2^bits) with 2^bits < 4 size; following the cycle from index until
  // it re-enters [0, size) restricts it to a permutation of [0, size).
  uint64_t x = feistel(index);
  while (x >= size_) x = feistel(x);
  return x;
}

DatasetBlend::DatasetBlend(const std::vector<double>& weights) : num_datasets_(static_cast<int64_t>(weights.size())) {
  MOE_CHECK(!weights.empty(), "dataset blend: no datasets");
  for (size_t d = 0; d < weights.size(); ++d) {
    MOE_CHECK(std::isfinite(weights[d]) && weights[d] > 0, "dataset blend: weight ", d, " = ", weights[d],
              " must be positive");
  }
  nodes_.reserve(2 * weights.size());
  build(weights, 0, num_datasets_);
}

int DatasetBlend::build(const std::vector<double>& weights, int64_t lo, int64_t hi) {
  const int at = static_cast<int>(nodes_.size());
  nodes_.push_back(Node{lo, lo, hi});
  if (hi - lo == 1) return at;
  const int64_t mid = lo + (hi - lo) / 2;
  double left = 0, all = 0;
  for (int64_t d = lo; d < hi; ++d) {
    all += weights[static_cast<size_t>(d)];
    if (d < mid) left += weights[static_cast<size_t>(d)];
  }
  const double share = std::ldexp(left / all, k_share_bits);
  const uint64_t fixed = share >= static_cast<double>(k_share_one) ? k_share_one : static_cast<uint64_t>(share);
  const int left_child = build(weights, lo, mid);
  const int right_child = build(weights, mid, hi);
  nodes_[static_cast<size_t>(at)] = Node{lo, mid, hi, fixed, left_child, right_child};
  return at;
}

BlendPick DatasetBlend::pick(int64_t global_sample) const {
  MOE_CHECK(global_sample >= 0, "dataset blend: sample ", global_sample, " is negative");
  int64_t i = global_sample;  // the arrival index at the current node
  const Node* node = &nodes_[0];
  while (node->left >= 0) {
    const int64_t before = left_count(i, node->left_share);
    if (left_count(i + 1, node->left_share) > before) {
      i = before;
      node = &nodes_[static_cast<size_t>(node->left)];
    } else {
      i -= before;
      node = &nodes_[static_cast<size_t>(node->right)];
    }
  }
  return {node->lo, i};
}

int64_t DatasetBlend::count(int64_t dataset, int64_t n) const {
  MOE_CHECK(dataset >= 0 && dataset < num_datasets_ && n >= 0, "dataset blend: count of dataset ", dataset,
            " among ", n, " samples");
  const Node* node = &nodes_[0];
  while (node->left >= 0) {
    const int64_t left = left_count(n, node->left_share);
    const bool go_left = dataset < node->mid;
    n = go_left ? left : n - left;
    node = &nodes_[static_cast<size_t>(go_left ? node->left : node->right)];
  }
  return n;
}

}  // namespace moe::data

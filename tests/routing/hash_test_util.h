// Helpers of the hash-table tests (tests/routing, tests/tools): clustered embedding rows and a
// checkpoint-like file holding them.
#pragma once

#include <algorithm>
#include <filesystem>
#include <random>
#include <vector>

#include "routing/hash_clustering.h"
#include "src/io/safetensors.h"
#include "tests/test_util.h"

namespace moe::test {

// Points around `num_clusters` centres 20 apart on distinct axes (noise in [-0.5, 0.5)),
// cluster of point i = truth[i]; sizes differ so that dispersal has remainders.
struct Blobs {
  EmbeddingRows rows;
  std::vector<int32_t> truth;
};
inline Blobs make_blobs(const std::vector<int64_t>& sizes, int64_t dim, uint64_t seed) {
  Blobs b;
  for (size_t c = 0; c < sizes.size(); ++c) {
    for (int64_t i = 0; i < sizes[c]; ++i) b.truth.push_back(static_cast<int32_t>(c));
  }
  // Interleave the clusters over token ids (a fixed shuffle), as real vocabularies would.
  std::vector<size_t> order(b.truth.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  std::vector<int32_t> shuffled;
  for (size_t i : order) shuffled.push_back(b.truth[i]);
  b.truth = shuffled;
  auto noise = test::random_values(static_cast<int64_t>(b.truth.size()) * dim, seed + 1, -0.5, 0.5);
  b.rows.rows = static_cast<int64_t>(b.truth.size());
  b.rows.dim = dim;
  b.rows.values = noise;
  for (size_t i = 0; i < b.truth.size(); ++i) b.rows.values[i * static_cast<size_t>(dim) + static_cast<size_t>(b.truth[i] % dim)] += 20.0;
  return b;
}

// Writes a checkpoint-like model.safetensors holding the embedding rows as embed.tokens (f32)
// next to another tensor, as a trained checkpoint would.
inline void write_embedding_checkpoint(const std::filesystem::path& dir, const EmbeddingRows& rows) {
  std::filesystem::create_directories(dir);
  std::vector<float> values(rows.values.begin(), rows.values.end());
  write_safetensors(dir / "model.safetensors",
                    {{"embed.positions", test::random_tensor({4, rows.dim}, DType::f32, 3)},
                     {"embed.tokens", Tensor::from_vector(values, {rows.rows, rows.dim}, DType::f32)}},
                    {{"format", "moe-engine"}});
}

}  // namespace moe::test

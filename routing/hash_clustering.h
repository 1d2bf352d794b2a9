// The clustering hash tables of Hash Layers: k-means over a trained checkpoint's input
// embeddings, one cluster per expert ("clustering"), or each cluster spread over all experts
// ("dispersed", so that similar tokens go to different experts).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "routing/hash_table.h"

namespace moe {

// Row-major points [rows, dim] as f64.
struct EmbeddingRows {
  int64_t rows = 0, dim = 0;
  std::vector<double> values;
  std::string source;  // the file they were read from
};

// The tensor "embed.tokens" [V,d] (f32, f64 or bf16) of a checkpoint: `path` is the checkpoint
// directory (its model.safetensors is read) or a .safetensors file. Reads only that tensor.
EmbeddingRows read_input_embeddings(const std::filesystem::path& path);

// Lloyd's k-means with k-means++ initialisation, deterministic from `seed`:
//  - init: centre 0 is point hash_keyed(seed, 0) mod n; centre c >= 1 is the first point i
//    whose running sum of D(i)^2 (squared distance to the nearest chosen centre) exceeds
//    hash_uniform(seed, c) * sum D^2 (if every D is 0: the lowest point not yet a centre);
//  - then at most `iterations` rounds of {centres = cluster means; reassign}, stopping early
//    when no label changes. Each point goes to the nearest centre (ties: lower index); an empty
//    cluster is re-seeded with the point farthest from its centre (ties: lower index).
// Returns labels[n] in [0, k). Needs n >= k >= 1.
std::vector<int32_t> kmeans_labels(const EmbeddingRows& points, int64_t k, uint64_t seed, int64_t iterations);

// Dispersal: the tokens of cluster 0 in id order, then those of cluster 1, ..., get experts
// 0, 1, ..., E-1, 0, 1, ... from one running counter. Every cluster lands on the experts with
// counts differing by at most one, and so does the whole vocabulary.
std::vector<int32_t> disperse_clusters(const std::vector<int32_t>& labels, int64_t num_clusters, int64_t num_experts);

// clustering: table[v] = k-means cluster of row v with E clusters (cluster c = expert c).
HashTable build_clustering_hash_table(const EmbeddingRows& embeddings, int64_t num_experts, uint64_t seed,
                                      int64_t iterations);
// dispersed: the same E clusters, dispersed over the E experts.
HashTable build_dispersed_hash_table(const EmbeddingRows& embeddings, int64_t num_experts, uint64_t seed,
                                     int64_t iterations);

}  // namespace moe

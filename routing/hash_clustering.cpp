// k-means over input embeddings (distances through one f64 GEMM per round on the CPU) and the
// clustering / dispersed hash tables built from it.
#include "routing/hash_clustering.h"

#include <fstream>
#include <limits>
#include <numeric>

#include "src/ops/ops.h"
#include "src/tensor/tensor.h"
#include "src/io/safetensors.h"
#include "src/util/log.h"
#include "src/util/progress.h"

namespace moe {

namespace {

constexpr const char* k_embedding_name = "embed.tokens";

// Squared distances [n,k] of every point to every centre: |x|^2 - 2 x.c + |c|^2 (clamped at 0).
std::vector<double> squared_distances(const Tensor& points, const std::vector<double>& point_norms,
                                      const std::vector<double>& centres, int64_t k) {
  const int64_t n = points.size(0), d = points.size(1);
  Tensor c = Tensor::from_vector(centres, {k, d}, DType::f64);
  Tensor dots = Tensor::empty({n, k}, DType::f64);
  ops::matmul(points, false, c, true, dots);
  std::vector<double> dist = dots.to_vector<double>();
  std::vector<double> centre_norms(static_cast<size_t>(k), 0.0);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t f = 0; f < d; ++f) centre_norms[j] += centres[j * d + f] * centres[j * d + f];
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      double& v = dist[i * k + j];
      v = std::max(0.0, point_norms[i] - 2.0 * v + centre_norms[j]);
    }
  }
  return dist;
}

// Nearest centre per point (ties: lower index); also each point's distance to it.
void assign(const std::vector<double>& dist, int64_t n, int64_t k, std::vector<int32_t>& labels,
            std::vector<double>& best) {
  labels.assign(static_cast<size_t>(n), 0);
  best.assign(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t arg = 0;
    for (int64_t j = 1; j < k; ++j) {
      if (dist[i * k + j] < dist[i * k + arg]) arg = j;
    }
    labels[i] = static_cast<int32_t>(arg);
    best[i] = dist[i * k + arg];
  }
}

double squared_distance(const EmbeddingRows& p, int64_t a, const std::vector<double>& centres, int64_t c) {
  double s = 0;
  for (int64_t f = 0; f < p.dim; ++f) {
    double diff = p.values[a * p.dim + f] - centres[c * p.dim + f];
    s += diff * diff;
  }
  return s;
}

// k-means++ seeding (see the header for the exact rule).
std::vector<double> kmeans_plus_plus(const EmbeddingRows& p, int64_t k, uint64_t seed) {
  const int64_t n = p.rows, d = p.dim;
  std::vector<double> centres(static_cast<size_t>(k * d));
  std::vector<char> chosen(static_cast<size_t>(n), 0);
  auto take = [&](int64_t point, int64_t c) {
    std::copy(p.values.begin() + point * d, p.values.begin() + (point + 1) * d, centres.begin() + c * d);
    chosen[point] = 1;
  };
  take(static_cast<int64_t>(hash_keyed(seed, 0) % static_cast<uint64_t>(n)), 0);
  std::vector<double> d2(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) d2[i] = squared_distance(p, i, centres, 0);
  for (int64_t c = 1; c < k; ++c) {
    double total = 0;
    for (double v : d2) total += v;
    int64_t pick = -1;
    if (total > 0) {
      double target = hash_uniform(seed, static_cast<uint64_t>(c)) * total, running = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (d2[i] <= 0) continue;
        running += d2[i];
        pick = i;  // the last positive one if rounding leaves target above the final sum
        if (running > target) break;
      }
    } else {
      for (int64_t i = 0; i < n && pick < 0; ++i) {
        if (!chosen[i]) pick = i;
      }
    }
    take(pick, c);
    for (int64_t i = 0; i < n; ++i) d2[i] = std::min(d2[i], squared_distance(p, i, centres, c));
  }
  return centres;
}

}  // namespace

EmbeddingRows read_input_embeddings(const std::filesystem::path& path) {
  std::filesystem::path file = std::filesystem::is_directory(path) ? path / "model.safetensors" : path;
  MOE_CHECK(std::filesystem::is_regular_file(file), "checkpoint ", file.string(),
            " does not exist (pass a checkpoint directory or its model.safetensors)");
  SafetensorsHeader header = read_safetensors_header(file);
  const SafetensorsEntry* entry = nullptr;
  for (const auto& e : header.entries) {
    if (e.name == k_embedding_name) entry = &e;
  }
  MOE_CHECK(entry != nullptr, "checkpoint ", file.string(), " has no tensor '", k_embedding_name,
            "' (the input embedding [vocab_size, d_model])");
  MOE_CHECK(is_floating(entry->dtype) && entry->shape.size() == 2, "checkpoint ", file.string(), ": '",
            k_embedding_name, "' is ", dtype_name(entry->dtype), shape_str(entry->shape),
            "; expected a floating-point [vocab_size, d_model] tensor");
  Tensor t = Tensor::empty(entry->shape, entry->dtype);
  std::ifstream in(file, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(header.data_start + entry->begin));
  in.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(entry->end - entry->begin));
  MOE_CHECK(in, "checkpoint truncated: ", file.string(), ": cannot read the data of tensor '", k_embedding_name, "'");
  return EmbeddingRows{entry->shape[0], entry->shape[1], t.to_vector<double>(), file.string()};
}

std::vector<int32_t> kmeans_labels(const EmbeddingRows& p, int64_t k, uint64_t seed, int64_t iterations) {
  const int64_t n = p.rows, d = p.dim;
  MOE_CHECK(k >= 1 && n >= k, "k-means with ", k, " clusters needs at least ", k, " points, got ", n);
  MOE_CHECK(d >= 1 && static_cast<int64_t>(p.values.size()) == n * d, "k-means points: ", p.values.size(),
            " values for ", n, " x ", d);
  MOE_CHECK(iterations >= 0, "k-means iterations = ", iterations, " must be at least 0");
  Tensor points = Tensor::from_vector(p.values, {n, d}, DType::f64);
  std::vector<double> norms(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t f = 0; f < d; ++f) norms[i] += p.values[i * d + f] * p.values[i * d + f];
  }
  std::vector<double> centres = kmeans_plus_plus(p, k, seed);
  std::vector<int32_t> labels, next;
  std::vector<double> best;
  assign(squared_distances(points, norms, centres, k), n, k, labels, best);
  ProgressDisplay progress;
  for (int64_t it = 0; it < iterations; ++it) {
    std::vector<double> sums(static_cast<size_t>(k * d), 0.0);
    std::vector<int64_t> sizes(static_cast<size_t>(k), 0);
    for (int64_t i = 0; i < n; ++i) {
      ++sizes[labels[i]];
      for (int64_t f = 0; f < d; ++f) sums[labels[i] * d + f] += p.values[i * d + f];
    }
    std::vector<char> reseeded(static_cast<size_t>(n), 0);
    for (int64_t c = 0; c < k; ++c) {
      if (sizes[c] > 0) {
        for (int64_t f = 0; f < d; ++f) centres[c * d + f] = sums[c * d + f] / static_cast<double>(sizes[c]);
        continue;
      }
      int64_t far = -1;
      for (int64_t i = 0; i < n; ++i) {
        if (!reseeded[i] && (far < 0 || best[i] > best[far])) far = i;
      }
      reseeded[far] = 1;
      std::copy(p.values.begin() + far * d, p.values.begin() + (far + 1) * d, centres.begin() + c * d);
    }
    assign(squared_distances(points, norms, centres, k), n, k, next, best);
    bool changed = next != labels;
    labels.swap(next);
    const bool done = !changed || it + 1 == iterations;
    if (progress.due() || done) {
      const std::string text = fmt::format("k-means: iteration {}/{}, inertia {:.6g} ({:.0f} s){}", it + 1, iterations,
                                           std::accumulate(best.begin(), best.end(), 0.0), progress.seconds(),
                                           changed ? "" : ", converged");
      if (done) {
        progress.finish(text, log::Level::debug);
      } else {
        progress.show(text);
      }
    }
    if (!changed) break;
  }
  return labels;
}

std::vector<int32_t> disperse_clusters(const std::vector<int32_t>& labels, int64_t num_clusters, int64_t num_experts) {
  MOE_CHECK(num_clusters >= 1 && num_experts >= 1, "dispersal needs at least one cluster and one expert");
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(num_clusters));
  for (size_t v = 0; v < labels.size(); ++v) {
    MOE_CHECK(labels[v] >= 0 && labels[v] < num_clusters, "token ", v, " has cluster ", labels[v], ", outside [0, ",
              num_clusters, ")");
    members[labels[v]].push_back(static_cast<int32_t>(v));
  }
  std::vector<int32_t> table(labels.size());
  int64_t next = 0;
  for (const auto& cluster : members) {
    for (int32_t v : cluster) table[v] = static_cast<int32_t>(next++ % num_experts);
  }
  return table;
}

HashTable build_clustering_hash_table(const EmbeddingRows& embeddings, int64_t num_experts, uint64_t seed,
                                      int64_t iterations) {
  HashTable t{HashKind::clustering, num_experts, embeddings.rows, seed, embeddings.source,
              kmeans_labels(embeddings, num_experts, seed, iterations)};
  check_hash_table(t, "clustering hash table");
  return t;
}

HashTable build_dispersed_hash_table(const EmbeddingRows& embeddings, int64_t num_experts, uint64_t seed,
                                     int64_t iterations) {
  auto labels = kmeans_labels(embeddings, num_experts, seed, iterations);
  HashTable t{HashKind::dispersed, num_experts, embeddings.rows, seed, embeddings.source,
              disperse_clusters(labels, num_experts, num_experts)};
  check_hash_table(t, "dispersed hash table");
  return t;
}

}  // namespace moe

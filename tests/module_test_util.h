// Helpers shared by the module gradient tests (tests/{model,nn,experts,parallel,routing}):
// gradient snapshots, accumulation checks, randomised parameters and distinct top-k ids.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "src/nn/param_store.h"
#include "tests/test_util.h"

namespace moe::test {

// Finite-difference tolerances of the f64 module checks, and large initial weights: gradients far
// from zero, routing far from ties.
inline constexpr double k_atol = 1e-7, k_rtol = 1e-5;
inline constexpr double k_init_std = 0.5;

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

inline std::vector<std::vector<double>> snapshot_grads(const ParamStore& store) {
  std::vector<std::vector<double>> out;
  for (size_t i = 0; i < store.infos().size(); ++i) out.push_back(store.grad(static_cast<ParamId>(i)).to_vector<double>());
  return out;
}

// backward accumulates into parameter gradients: a second backward doubles them.
inline void require_grads_doubled(const ParamStore& store, const std::vector<std::vector<double>>& first) {
  for (size_t i = 0; i < store.infos().size(); ++i) {
    std::vector<double> twice = first[i];
    for (auto& g : twice) g *= 2;
    test::require_close(store.grad(static_cast<ParamId>(i)).to_vector<double>(), twice, 1e-12, 1e-12,
                        store.info(static_cast<ParamId>(i)).name + " accumulates");
  }
}

// Replaces a parameter's initial values (norm weights start at ones, biases at zeros).
inline void randomize_param(ParamStore& store, ParamId id, uint64_t seed, double lo, double hi) {
  const ParamInfo& p = store.info(id);
  store.load_master_from_host(id, f64_tensor(test::random_values(p.numel(), seed, lo, hi), p.shape));
}

// ids i32[T,k] with k distinct experts per token (what any top-k router produces).
inline Tensor distinct_ids(int64_t tokens, int64_t k, int64_t experts, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  std::vector<int32_t> perm(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    ids.insert(ids.end(), perm.begin(), perm.begin() + k);
  }
  return Tensor::from_vector(ids, {tokens, k}, DType::i32);
}

}  // namespace moe::test

// Helpers of the CUDA-vs-CPU tests: the same values on both devices (bf16-rounded first when
// the GPU side is bf16, so both backends see identical inputs), NaN-poisoned outputs, exact
// comparison of discrete outputs.
#pragma once

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace moe::test {

inline Device gpu() { return Device::cuda(0); }

inline float round_bf16(float x) { return bf16_bits_to_f32(f32_to_bf16_bits(x)); }

// One logical tensor held twice: `cpu` in f32 (the reference) and `gpu` in the CUDA dtype.
struct Mirror {
  Tensor cpu, gpu;
};

inline Mirror mirror_values(std::vector<float> values, const Shape& shape, DType gpu_dtype) {
  if (gpu_dtype == DType::bf16) {
    for (auto& v : values) v = round_bf16(v);
  }
  return {Tensor::from_vector(values, shape, DType::f32), Tensor::from_vector(values, shape, gpu_dtype, gpu())};
}

inline Mirror random_mirror(const Shape& shape, DType gpu_dtype, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  auto v = random_values(shape_numel(shape), seed, lo, hi);
  return mirror_values(std::vector<float>(v.begin(), v.end()), shape, gpu_dtype);
}

// A CPU f32 result (e.g. a saved forward statistic) fed to both backends; the CPU copy is
// replaced by the rounded values too, so both sides compute from the same inputs.
inline Mirror mirror_of(const Tensor& cpu_f32, DType gpu_dtype) {
  return mirror_values(cpu_f32.to_vector<float>(), cpu_f32.shape(), gpu_dtype);
}

inline Mirror mirror_ids(const std::vector<int32_t>& ids, const Shape& shape) {
  return {Tensor::from_vector(ids, shape, DType::i32), Tensor::from_vector(ids, shape, DType::i32, gpu())};
}

inline std::vector<int32_t> random_int_values(int64_t n, int64_t bound, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (auto& x : out) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(bound));
  return out;
}

// Float outputs are NaN-filled, integer outputs hold a value no kernel writes.
inline Tensor poisoned_on(const Shape& shape, DType dtype, Device device) {
  const auto n = static_cast<size_t>(shape_numel(shape));
  if (dtype == DType::i32) return Tensor::from_vector(std::vector<int32_t>(n, -123456789), shape, dtype, device);
  if (dtype == DType::f64) {
    return Tensor::from_vector(std::vector<double>(n, std::numeric_limits<double>::quiet_NaN()), shape, dtype, device);
  }
  return Tensor::from_vector(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()), shape, dtype, device);
}

// An output pair: f32 on the CPU, gpu_dtype on the GPU (i32 on both when gpu_dtype is i32).
inline Mirror poisoned_pair(const Shape& shape, DType gpu_dtype) {
  const DType cpu_dtype = gpu_dtype == DType::i32 ? DType::i32 : DType::f32;
  return {poisoned_on(shape, cpu_dtype, Device::cpu()), poisoned_on(shape, gpu_dtype, gpu())};
}

inline void require_match(const Mirror& m, Tolerance tol, const std::string& what) {
  require_close(m.gpu, m.cpu, tol.atol, tol.rtol, what);
}

// Discrete outputs: every element equal.
inline void require_equal(const Tensor& got, const Tensor& ref, const std::string& what) {
  auto g = got.to_vector<int64_t>(), r = ref.to_vector<int64_t>();
  REQUIRE(g.size() == r.size());
  size_t bad = g.size();
  for (size_t i = 0; i < g.size(); ++i) {
    if (g[i] != r[i]) {
      bad = i;
      break;
    }
  }
  INFO(what << ": first mismatch at " << bad << (bad < g.size() ? " got " + std::to_string(g[bad]) + " ref " +
                                                                      std::to_string(r[bad])
                                                                : std::string()));
  REQUIRE(bad == g.size());
}

// bf16 outputs: the shared bf16 tolerance. f32 ("accum") outputs computed in fp32 on the GPU
// against double on the CPU from identical inputs: errors are ~1e-6 relative, so 1e-3 still
// fails any indexing or formula bug by orders of magnitude.
inline Tolerance bf16_tol() { return tolerance_for(DType::bf16); }
inline Tolerance accum_tol() { return {1e-3, 1e-3}; }

// Document lengths cutting each of `seqs` sequences of seq_len (document masking tests): seeded,
// between 1 and 2 * mean, with one-token documents mixed in.
inline std::vector<std::vector<int>> random_documents(int64_t seqs, int64_t seq_len, int64_t mean, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int>> docs(static_cast<size_t>(seqs));
  for (auto& row : docs) {
    int64_t left = seq_len;
    while (left > 0) {
      const int64_t want = rng() % 5 == 0 ? 1 : 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * mean));
      const int64_t length = std::min(want, left);
      row.push_back(static_cast<int>(length));
      left -= length;
    }
  }
  return docs;
}

// Their document starts (ops.h doc_starts) on both devices.
inline Mirror document_starts_mirror(const std::vector<std::vector<int>>& docs, int64_t seq_len) {
  std::vector<int32_t> starts = document_starts_of(docs, seq_len);
  return mirror_ids(starts, {static_cast<int64_t>(starts.size())});
}

// Distinct seeds per case: mixes the case's sizes into a base seed.
inline uint64_t seed_of(uint64_t base, std::initializer_list<int64_t> sizes) {
  uint64_t s = base * 0x9e3779b97f4a7c15ull;
  for (int64_t v : sizes) s = (s ^ static_cast<uint64_t>(v)) * 0x100000001b3ull + 0x7f4a7c15ull;
  return s;
}

}  // namespace moe::test

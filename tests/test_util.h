// Shared test helpers: random tensors, the one tolerance check, finite differences.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "src/nn/param_store.h"
#include "src/tensor/tensor.h"

namespace moe::test {

// Uniform values in [lo, hi) from a fixed seed (never zeros-only inputs).
inline std::vector<double> random_values(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> out(static_cast<size_t>(n));
  for (auto& x : out) x = dist(rng);
  return out;
}

inline Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, Device device = Device::cpu(),
                            double lo = -1.0, double hi = 1.0) {
  auto values = random_values(shape_numel(shape), seed, lo, hi);
  if (dtype == DType::f64) return Tensor::from_vector(values, shape, dtype, device);
  std::vector<float> f(values.begin(), values.end());
  return Tensor::from_vector(f, shape, dtype, device);
}

inline Tensor random_ids(int64_t n, int64_t bound, uint64_t seed, Device device = Device::cpu()) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(bound));
  return Tensor::from_vector(ids, {n}, DType::i32, device);
}

// Document starts (ops.h, doc_starts) of sequences cut into documents: lengths[b] lists the
// document lengths of sequence b (summing to seq_len), so token t of a document beginning at
// position s gets s.
inline std::vector<int32_t> document_starts_of(const std::vector<std::vector<int>>& lengths, int64_t seq_len) {
  std::vector<int32_t> starts;
  for (const auto& row : lengths) {
    int32_t begin = 0;
    for (int length : row) {
      starts.insert(starts.end(), static_cast<size_t>(length), begin);
      begin += length;
    }
    REQUIRE(begin == seq_len);
  }
  return starts;
}

// The one tolerance rule: |got - ref| <= atol + rtol * |ref| elementwise. Reports the worst.
inline void require_close(const std::vector<double>& got, const std::vector<double>& ref, double atol, double rtol,
                          const std::string& what) {
  REQUIRE(got.size() == ref.size());
  if (got.empty()) return;
  double worst = 0;
  size_t worst_i = 0;
  bool ok = true;
  for (size_t i = 0; i < got.size(); ++i) {
    double err = std::abs(got[i] - ref[i]);
    double excess = err - (atol + rtol * std::abs(ref[i]));
    if (!(excess <= 0)) ok = false;  // NaN fails too
    if (!(excess <= worst)) {
      worst = excess;
      worst_i = i;
    }
  }
  INFO(what << ": worst element " << worst_i << " got " << got[worst_i] << " ref " << ref[worst_i]);
  REQUIRE(ok);
}

inline void require_close(const Tensor& got, const Tensor& ref, double atol, double rtol, const std::string& what) {
  require_close(got.to_vector<double>(), ref.to_vector<double>(), atol, rtol, what);
}

// Per-dtype tolerances for comparing against an f64 or f32 reference.
struct Tolerance {
  double atol, rtol;
};
inline Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::f64: return {1e-10, 1e-9};
    case DType::f32: return {1e-5, 1e-4};
    default: return {2e-2, 2e-2};  // bf16 storage (8 bits of mantissa), fp32 accumulation
  }
}

// Central finite difference of a scalar function f with respect to every element of x (f64).
inline std::vector<double> numeric_gradient(Tensor& x, const std::function<double()>& f, double eps = 1e-6) {
  REQUIRE(x.dtype() == DType::f64);
  REQUIRE(!x.is_cuda());
  std::vector<double> grad(static_cast<size_t>(x.numel()));
  double* data = x.data_as<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    double saved = data[i];
    data[i] = saved + eps;
    double plus = f();
    data[i] = saved - eps;
    double minus = f();
    data[i] = saved;
    grad[static_cast<size_t>(i)] = (plus - minus) / (2 * eps);
  }
  return grad;
}

// sum_i a[i] * w[i]: the scalar objective of the module gradient checks (random fixed weights w).
inline double weighted_sum(const Tensor& a, const std::vector<double>& w) {
  auto v = a.to_vector<double>();
  REQUIRE(v.size() == w.size());
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

inline Tensor f64_tensor(const std::vector<double>& values, const Shape& shape) {
  return Tensor::from_vector(values, shape, DType::f64);
}

// The analytic gradient against central differences of f w.r.t. every element of wrt. The
// numeric gradient must exceed `floor` (far above the ~1e-10 error of the differences), so that
// the comparison cannot pass vacuously.
inline void check_gradient(const std::vector<double>& analytic, Tensor& wrt, const std::function<double()>& f,
                           const std::string& what, double floor = 1e-3, double atol = 1e-7, double rtol = 1e-5) {
  auto numeric = numeric_gradient(wrt, f);
  INFO(what << ": max |numeric gradient| = " << max_abs(numeric));
  REQUIRE(max_abs(numeric) > floor);
  require_close(analytic, numeric, atol, rtol, what);
}

// Every parameter's gradient against finite differences. Buffers (the selection-only expert
// bias) get no gradient, and the objective does not depend on them while the routing is fixed.
inline void check_param_gradients(ParamStore& store, const std::function<double()>& f) {
  REQUIRE(!store.infos().empty());
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    Tensor p = store.param(id);
    if (store.info(id).kind == ParamKind::buffer) {
      INFO(store.info(id).name << " (buffer)");
      REQUIRE(max_abs(store.grad(id).to_vector<double>()) == 0.0);
      REQUIRE(max_abs(numeric_gradient(p, f)) < 1e-9);
      continue;
    }
    check_gradient(store.grad(id).to_vector<double>(), p, f, store.info(id).name);
  }
}

}  // namespace moe::test

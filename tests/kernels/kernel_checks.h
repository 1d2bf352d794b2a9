// Helpers shared by the CPU kernel tests: tensors from values, linear functionals of outputs
// and the finite-difference gradient check used for every backward.
#pragma once

#include <limits>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace moe::test {

inline Tensor values_tensor(const std::vector<double>& values, const Shape& shape, DType dtype) {
  if (dtype == DType::f64) return Tensor::from_vector(values, shape, dtype);
  std::vector<float> f(values.begin(), values.end());
  return Tensor::from_vector(f, shape, dtype);
}

inline Tensor ids_tensor(const std::vector<int32_t>& ids, const Shape& shape) {
  return Tensor::from_vector(ids, shape, DType::i32);
}

// An output tensor filled with NaN, so a kernel that reads instead of writing it shows up.
inline Tensor poisoned(const Shape& shape, DType dtype) {
  return values_tensor(
      std::vector<double>(static_cast<size_t>(shape_numel(shape)), std::numeric_limits<double>::quiet_NaN()), shape,
      dtype);
}

inline std::vector<double> values_of(const Tensor& t) { return t.to_vector<double>(); }

// sum_i r[i] * y[i]: a random linear functional, whose gradient with respect to y is r.
inline double functional(const Tensor& y, const std::vector<double>& r) {
  auto v = values_of(y);
  REQUIRE(v.size() == r.size());
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += r[i] * v[i];
  return s;
}

// The analytic gradient of f with respect to x (f64) matches central finite differences.
inline void check_gradient(Tensor& x, const std::function<double()>& f, const std::vector<double>& analytic,
                           const std::string& what) {
  auto numeric = numeric_gradient(x, f);
  require_close(analytic, numeric, 1e-7, 1e-6, what);
}

inline std::vector<double> minus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] - b[i];
  return out;
}

}  // namespace moe::test

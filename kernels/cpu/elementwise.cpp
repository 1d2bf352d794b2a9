// CPU reference elementwise ops and reductions. Sums use double accumulators so f32 tensors
// of millions of elements keep their precision (gradient norms, loss sums).
#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace moe::cpu {

template <typename T>
void add(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void accumulate(T* dst, const T* src, double alpha, int64_t n) {
  const T a = static_cast<T>(alpha);
  for (int64_t i = 0; i < n; ++i) dst[i] += a * src[i];
}

template <typename T>
void scale(T* x, double alpha, int64_t n) {
  const T a = static_cast<T>(alpha);
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

template <typename Src, typename Dst>
void cast(const Src* src, Dst* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}

template <typename T>
double sum(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]);
  return s;
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return s;
}

template <typename T>
void column_sum(const T* x, T* out, int64_t rows, int64_t cols) {
  std::vector<double> acc(static_cast<size_t>(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    for (int64_t c = 0; c < cols; ++c) acc[static_cast<size_t>(c)] += static_cast<double>(xr[c]);
  }
  for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<T>(acc[static_cast<size_t>(c)]);
}

template <typename T>
void row_entropy_accumulate(const T* x, int64_t rows, int64_t cols, double weight, double* acc) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0, plogp = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const auto v = static_cast<double>(x[r * cols + c]);
      z += v;
      if (v > 0) plogp += v * std::log(v);
    }
    total += std::log(z) - plogp / z;
  }
  acc[0] += weight * total;
}

template void add<float>(const float*, const float*, float*, int64_t);
template void add<double>(const double*, const double*, double*, int64_t);
template void accumulate<float>(float*, const float*, double, int64_t);
template void accumulate<double>(double*, const double*, double, int64_t);
template void scale<float>(float*, double, int64_t);
template void scale<double>(double*, double, int64_t);
template void cast<float, float>(const float*, float*, int64_t);
template void cast<float, double>(const float*, double*, int64_t);
template void cast<double, float>(const double*, float*, int64_t);
template void cast<double, double>(const double*, double*, int64_t);
template double sum<float>(const float*, int64_t);
template double sum<double>(const double*, int64_t);
template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template void column_sum<float>(const float*, float*, int64_t, int64_t);
template void column_sum<double>(const double*, double*, int64_t, int64_t);
template void row_entropy_accumulate<float>(const float*, int64_t, int64_t, double, double*);
template void row_entropy_accumulate<double>(const double*, int64_t, int64_t, double, double*);

}  // namespace moe::cpu

// CPU reference RMSNorm and LayerNorm. Statistics and the parameter-gradient sums over rows
// are accumulated in double, then stored in T.
#include "kernels/cpu/norms.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace moe::cpu {

namespace {

// Row r of the norm's input: x's row, or h = x + delta written first when delta is given.
template <typename T>
const T* input_row(const T* x, const T* delta, T* h, int64_t r, int64_t dim) {
  const T* xr = x + r * dim;
  if (!delta) return xr;
  const T* dr = delta + r * dim;
  T* hr = h + r * dim;
  for (int64_t i = 0; i < dim; ++i) hr[i] = xr[i] + dr[i];
  return hr;
}

// Where the norm's gradient of a row goes: dx's row, or with a residual gradient a row of
// scratch (dresidual may be dx itself, so dx cannot hold the gradient before the sum).
template <typename T>
T* grad_row(T* dx, const T* dresidual, std::vector<T>& scratch, int64_t r, int64_t dim) {
  return dresidual ? scratch.data() : dx + r * dim;
}

// dx row = the norm's gradient (rounded to T) + the residual gradient: the unfused accumulate's
// arithmetic, in a loop of its own so the gradient loop compiles as before.
template <typename T>
void add_residual(const T* grad, const T* dresidual, T* dx, int64_t r, int64_t dim) {
  if (!dresidual) return;
  const T* rr = dresidual + r * dim;
  T* dxr = dx + r * dim;
  for (int64_t i = 0; i < dim; ++i) dxr[i] = grad[i] + rr[i];
}

}  // namespace

template <typename T>
void rmsnorm_forward(const T* x, const T* delta, T* h, const T* w, T* y, T* rstd, int64_t rows, int64_t dim,
                     double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = input_row(x, delta, h, r, dim);
    double sum_sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    double s = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
    rstd[r] = static_cast<T>(s);
    T* yr = y + r * dim;
    for (int64_t i = 0; i < dim; ++i) yr[i] = static_cast<T>(xr[i] * s * w[i]);
  }
}

// With xhat = x * rstd and g = dy * w: dx = rstd * (g - xhat * mean(g * xhat)), dw += dy * xhat.
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* dy, const T* dresidual, T* dx, T* dw,
                      int64_t rows, int64_t dim) {
  std::vector<double> dw_acc(static_cast<size_t>(dim), 0.0);
  std::vector<T> scratch(dresidual ? static_cast<size_t>(dim) : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    const T* dyr = dy + r * dim;
    double s = rstd[r];
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) {
      double xhat = xr[i] * s;
      dot += static_cast<double>(dyr[i]) * w[i] * xhat;
      dw_acc[static_cast<size_t>(i)] += dyr[i] * xhat;
    }
    double mean_dot = dot / static_cast<double>(dim);
    T* dxr = grad_row(dx, dresidual, scratch, r, dim);
    for (int64_t i = 0; i < dim; ++i) {
      double xhat = xr[i] * s;
      dxr[i] = static_cast<T>(s * (static_cast<double>(dyr[i]) * w[i] - xhat * mean_dot));
    }
    add_residual(dxr, dresidual, dx, r, dim);
  }
  for (int64_t i = 0; i < dim; ++i) dw[i] = static_cast<T>(dw[i] + dw_acc[static_cast<size_t>(i)]);
}

template <typename T>
void layernorm_forward(const T* x, const T* delta, T* h, const T* w, const T* b, T* y, T* mean, T* rstd,
                       int64_t rows, int64_t dim, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = input_row(x, delta, h, r, dim);
    double sum = 0;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    double mu = sum / static_cast<double>(dim);
    double var = 0;  // two-pass variance: no cancellation for rows with a large mean
    for (int64_t i = 0; i < dim; ++i) var += (xr[i] - mu) * (xr[i] - mu);
    double s = 1.0 / std::sqrt(var / static_cast<double>(dim) + eps);
    mean[r] = static_cast<T>(mu);
    rstd[r] = static_cast<T>(s);
    T* yr = y + r * dim;
    for (int64_t i = 0; i < dim; ++i) yr[i] = static_cast<T>((xr[i] - mu) * s * w[i] + b[i]);
  }
}

// With xhat = (x - mean) * rstd and g = dy * w:
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dw += dy * xhat, db += dy.
template <typename T>
void layernorm_backward(const T* x, const T* w, const T* mean, const T* rstd, const T* dy, const T* dresidual, T* dx,
                        T* dw, T* db, int64_t rows, int64_t dim) {
  std::vector<double> dw_acc(static_cast<size_t>(dim), 0.0), db_acc(static_cast<size_t>(dim), 0.0);
  std::vector<T> scratch(dresidual ? static_cast<size_t>(dim) : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    const T* dyr = dy + r * dim;
    double mu = mean[r], s = rstd[r];
    double sum_g = 0, sum_g_xhat = 0;
    for (int64_t i = 0; i < dim; ++i) {
      double xhat = (xr[i] - mu) * s;
      double g = static_cast<double>(dyr[i]) * w[i];
      sum_g += g;
      sum_g_xhat += g * xhat;
      dw_acc[static_cast<size_t>(i)] += dyr[i] * xhat;
      db_acc[static_cast<size_t>(i)] += dyr[i];
    }
    double mean_g = sum_g / static_cast<double>(dim), mean_g_xhat = sum_g_xhat / static_cast<double>(dim);
    T* dxr = grad_row(dx, dresidual, scratch, r, dim);
    for (int64_t i = 0; i < dim; ++i) {
      double xhat = (xr[i] - mu) * s;
      dxr[i] = static_cast<T>(s * (static_cast<double>(dyr[i]) * w[i] - mean_g - xhat * mean_g_xhat));
    }
    add_residual(dxr, dresidual, dx, r, dim);
  }
  for (int64_t i = 0; i < dim; ++i) {
    dw[i] = static_cast<T>(dw[i] + dw_acc[static_cast<size_t>(i)]);
    db[i] = static_cast<T>(db[i] + db_acc[static_cast<size_t>(i)]);
  }
}

#define MOE_NORMS(T)                                                                                      \
  template void rmsnorm_forward<T>(const T*, const T*, T*, const T*, T*, T*, int64_t, int64_t, double);            \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t);  \
  template void layernorm_forward<T>(const T*, const T*, T*, const T*, const T*, T*, T*, T*, int64_t, int64_t,     \
                                     double);                                                                      \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*,      \
                                      int64_t, int64_t);
MOE_NORMS(float)
MOE_NORMS(double)
#undef MOE_NORMS

}  // namespace moe::cpu

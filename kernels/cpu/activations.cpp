// CPU reference activations and their derivatives, evaluated per element in double.
// gelu is the tanh approximation (GPT-2 / Megatron), silu(x) = x * sigmoid(x).
#include "kernels/cpu/activations.h"

#include <cmath>

namespace moe::cpu {

using kernels::Activation;

namespace {

constexpr double k_sqrt_2_over_pi = 0.7978845608028654;
constexpr double k_gelu_cubic = 0.044715;

double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(k_sqrt_2_over_pi * (x + k_gelu_cubic * x * x * x))); }

double gelu_grad(double x) {
  double t = std::tanh(k_sqrt_2_over_pi * (x + k_gelu_cubic * x * x * x));
  double dinner = k_sqrt_2_over_pi * (1.0 + 3.0 * k_gelu_cubic * x * x);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double silu(double x) { return x * sigmoid(x); }
double silu_grad(double x) {
  double s = sigmoid(x);
  return s * (1.0 + x * (1.0 - s));
}

// The gate function of each activation and its derivative.
double act_value(Activation act, double x) {
  switch (act) {
    case Activation::relu: return x > 0 ? x : 0.0;
    case Activation::gelu:
    case Activation::geglu: return gelu(x);
    case Activation::swiglu: return silu(x);
  }
  return 0;
}

double act_grad(Activation act, double x) {
  switch (act) {
    case Activation::relu: return x > 0 ? 1.0 : 0.0;
    case Activation::gelu:
    case Activation::geglu: return gelu_grad(x);
    case Activation::swiglu: return silu_grad(x);
  }
  return 0;
}


}  // namespace

template <typename T>
void activation_forward(Activation act, const T* x, T* y, int64_t rows, int64_t width) {
  const int64_t in_width = kernels::is_gated(act) ? 2 * width : width;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * in_width;
    T* yr = y + r * width;
    if (kernels::is_gated(act)) {
      for (int64_t i = 0; i < width; ++i) yr[i] = static_cast<T>(act_value(act, xr[i]) * xr[width + i]);
    } else {
      for (int64_t i = 0; i < width; ++i) yr[i] = static_cast<T>(act_value(act, xr[i]));
    }
  }
}

template <typename T>
void activation_backward(Activation act, const T* x, const T* dy, T* dx, int64_t rows, int64_t width) {
  const int64_t in_width = kernels::is_gated(act) ? 2 * width : width;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * in_width;
    const T* dyr = dy + r * width;
    T* dxr = dx + r * in_width;
    if (kernels::is_gated(act)) {
      for (int64_t i = 0; i < width; ++i) {
        double gate = xr[i], up = xr[width + i], g = dyr[i];
        dxr[i] = static_cast<T>(g * up * act_grad(act, gate));
        dxr[width + i] = static_cast<T>(g * act_value(act, gate));
      }
    } else {
      for (int64_t i = 0; i < width; ++i) dxr[i] = static_cast<T>(dyr[i] * act_grad(act, xr[i]));
    }
  }
}

template <typename T>
void activation_backward_weighted(Activation act, const T* x, const T* g, const T* row_weights, T* dx, T* a_weighted,
                                  T* drow_weights, int64_t rows, int64_t width) {
  const bool gated = kernels::is_gated(act);
  const int64_t in_width = gated ? 2 * width : width;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * in_width;
    const T* gr = g + r * width;
    T* dxr = dx + r * in_width;
    T* ar = a_weighted + r * width;
    const double w = row_weights != nullptr ? static_cast<double>(row_weights[r]) : 1.0;
    double dot = 0;
    for (int64_t i = 0; i < width; ++i) {
      const double gate = xr[i], up = gated ? static_cast<double>(xr[width + i]) : 1.0, gi = gr[i];
      const double a = act_value(act, gate) * up;
      dot += gi * a;
      ar[i] = static_cast<T>(w * a);
      dxr[i] = static_cast<T>(w * gi * up * act_grad(act, gate));
      if (gated) dxr[width + i] = static_cast<T>(w * gi * act_value(act, gate));
    }
    if (drow_weights != nullptr) drow_weights[r] = static_cast<T>(dot);
  }
}

template void activation_backward_weighted<float>(Activation, const float*, const float*, const float*, float*, float*,
                                                  float*, int64_t, int64_t);
template void activation_backward_weighted<double>(Activation, const double*, const double*, const double*, double*,
                                                   double*, double*, int64_t, int64_t);
template void activation_forward<float>(Activation, const float*, float*, int64_t, int64_t);
template void activation_forward<double>(Activation, const double*, double*, int64_t, int64_t);
template void activation_backward<float>(Activation, const float*, const float*, float*, int64_t, int64_t);
template void activation_backward<double>(Activation, const double*, const double*, double*, int64_t, int64_t);

}  // namespace moe::cpu

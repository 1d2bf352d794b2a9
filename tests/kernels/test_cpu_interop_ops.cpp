// The ops added for Hugging Face architectures, on the CPU: rope frequency scaling (linear, llama3)
// against transformers' formulas written out independently, and linear biases with their gradient.
#include <cmath>
#include <numbers>

#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;

namespace {

// transformers' _compute_llama3_parameters, element by element (wavelen, the three masks).
double llama3_reference(double inv_freq, double factor, double low, double high, double old_len) {
  const double wavelen = 2 * std::numbers::pi / inv_freq;
  double out = wavelen > old_len / low ? inv_freq / factor : inv_freq;
  const double smooth = (old_len / wavelen - low) / (high - low);
  const bool medium = !(wavelen < old_len / high) && !(wavelen > old_len / low);
  if (medium) out = (1 - smooth) * out / factor + smooth * out;
  return out;
}

}  // namespace

TEST_CASE("rope_inv_freq applies linear and llama3 scaling as transformers does", "[kernels][cpu][rope]") {
  // Llama 3.1: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192 positions.
  ops::RopeScaling llama3{ops::RopeScalingKind::llama3, 8.0, 1.0, 4.0, 8192.0};
  ops::RopeScaling linear{ops::RopeScalingKind::linear, 2.5};
  int kept = 0, divided = 0, smoothed = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const double base = std::pow(500000.0, -2.0 * static_cast<double>(i) / 128.0);
    REQUIRE(kernels::rope_inv_freq(i, 128, 500000.0, {}) == base);
    REQUIRE(kernels::rope_inv_freq(i, 128, 500000.0, linear) == Approx(base / 2.5).epsilon(1e-14));
    const double got = kernels::rope_inv_freq(i, 128, 500000.0, llama3);
    REQUIRE(got == Approx(llama3_reference(base, 8.0, 1.0, 4.0, 8192.0)).epsilon(1e-14));
    kept += got == base;
    divided += got == Approx(base / 8.0).epsilon(1e-14);
    smoothed += got != base && got != Approx(base / 8.0).epsilon(1e-14);
  }
  REQUIRE(kept > 0);  // all three branches are taken
  REQUIRE(divided > 0);
  REQUIRE(smoothed > 0);
}

TEST_CASE("ops::rope with scaling rotates by position times the scaled frequency", "[kernels][cpu][rope]") {
  const int64_t seq = 6, heads = 2, hd = 8, half = hd / 2;
  ops::RopeScaling s{ops::RopeScalingKind::llama3, 4.0, 0.5, 2.0, 16.0};
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = random_tensor({seq, heads * hd}, dt, 5, Device::cpu(), -1.0, 1.0);
    std::vector<double> in = values_of(x), ref(in.size());
    for (int64_t t = 0; t < seq; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < half; ++i) {
          const double a = static_cast<double>(t) * kernels::rope_inv_freq(i, hd, 100.0, s);
          const size_t j = static_cast<size_t>((t * heads + h) * hd + i), k = j + static_cast<size_t>(half);
          ref[j] = in[j] * std::cos(a) - in[k] * std::sin(a);
          ref[k] = in[j] * std::sin(a) + in[k] * std::cos(a);
        }
      }
    }
    ops::rope(x, heads, seq, 100.0f, false, Tensor(), s);
    Tolerance tol = tolerance_for(dt);
    require_close(values_of(x), ref, tol.atol, tol.rtol, std::string("scaled rope ") + dtype_name(dt));
    ops::rope(x, heads, seq, 100.0f, true, Tensor(), s);
    require_close(values_of(x), in, tol.atol, tol.rtol, std::string("scaled rope inverse ") + dtype_name(dt));
  }
  Tensor x = random_tensor({seq, heads * hd}, DType::f64, 6);
  ops::RopeScaling bad{ops::RopeScalingKind::llama3, 4.0, 2.0, 2.0, 16.0};
  REQUIRE_THROWS_WITH(ops::rope(x, heads, seq, 100.0f, false, Tensor(), bad),
                      Catch::Contains("llama3 scaling needs 0 < low_freq_factor < high_freq_factor"));
}

TEST_CASE("add_bias adds a row vector and bias_backward accumulates column sums", "[kernels][cpu][bias]") {
  for (int64_t rows : {1, 7, 19}) {
    const int64_t cols = 5;
    Tensor y = random_tensor({rows, cols}, DType::f64, 7);
    Tensor b = random_tensor({cols}, DType::f64, 8);
    std::vector<double> yv = values_of(y), bv = values_of(b), ref = yv;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) ref[static_cast<size_t>(r * cols + c)] += bv[static_cast<size_t>(c)];
    ops::add_bias(y, b);
    require_close(values_of(y), ref, 0, 0, "add_bias");
    Tensor db = random_tensor({cols}, DType::f64, 9);
    std::vector<double> dref = values_of(db);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dref[static_cast<size_t>(c)] += yv[static_cast<size_t>(r * cols + c)];
    Tensor dy = Tensor::from_vector(yv, {rows, cols}, DType::f64);
    ops::bias_backward(dy, db);
    require_close(values_of(db), dref, 1e-14, 1e-14, "bias_backward");
  }
  Tensor y = random_tensor({3, 5}, DType::f64, 1), b4 = random_tensor({4}, DType::f64, 2);
  REQUIRE_THROWS_WITH(ops::add_bias(y, b4), Catch::Contains("add_bias b"));
}

// CPU reference rotary position embedding. Angles are computed in double once per row and
// reused across that row's heads.
#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace moe::cpu {

namespace {

// Rotates the row's heads by the angles pos * inv_freq[i] (negated when inverse).
template <typename T>
void rotate_row(T* row, int64_t num_heads, int64_t head_dim, double pos, const std::vector<double>& inv_freq,
                bool inverse) {
  const int64_t half = head_dim / 2;
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = pos * inv_freq[static_cast<size_t>(i)];
    const double c = std::cos(angle), s = sign * std::sin(angle);
    for (int64_t h = 0; h < num_heads; ++h) {
      T* head = row + h * head_dim;
      double x1 = head[i], x2 = head[i + half];
      head[i] = static_cast<T>(x1 * c - x2 * s);
      head[i + half] = static_cast<T>(x1 * s + x2 * c);
    }
  }
}

std::vector<double> inverse_frequencies(int64_t head_dim, double theta, const kernels::RopeScaling& scaling) {
  std::vector<double> inv_freq(static_cast<size_t>(head_dim / 2));
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    inv_freq[i] = kernels::rope_inv_freq(static_cast<int64_t>(i), head_dim, theta, scaling);
  }
  return inv_freq;
}

}  // namespace

template <typename T>
void rope(T* x, int64_t rows, int64_t num_heads, int64_t head_dim, int64_t seq_len, double theta, bool inverse,
          const int32_t* doc_starts, const kernels::RopeScaling& scaling) {
  const std::vector<double> inv_freq = inverse_frequencies(head_dim, theta, scaling);
  for (int64_t r = 0; r < rows; ++r) {
    const double pos = static_cast<double>(r % seq_len - (doc_starts ? doc_starts[r] : 0));
    rotate_row(x + r * num_heads * head_dim, num_heads, head_dim, pos, inv_freq, inverse);
  }
}

template <typename T>
void rope_at(T* x, int64_t rows, int64_t num_heads, int64_t head_dim, const int32_t* positions, double theta,
             const kernels::RopeScaling& scaling) {
  const std::vector<double> inv_freq = inverse_frequencies(head_dim, theta, scaling);
  for (int64_t r = 0; r < rows; ++r) {
    rotate_row(x + r * num_heads * head_dim, num_heads, head_dim, static_cast<double>(positions[r]), inv_freq, false);
  }
}

template void rope<float>(float*, int64_t, int64_t, int64_t, int64_t, double, bool, const int32_t*,
                          const kernels::RopeScaling&);
template void rope<double>(double*, int64_t, int64_t, int64_t, int64_t, double, bool, const int32_t*,
                          const kernels::RopeScaling&);

template void rope_at<float>(float*, int64_t, int64_t, int64_t, const int32_t*, double, const kernels::RopeScaling&);
template void rope_at<double>(double*, int64_t, int64_t, int64_t, const int32_t*, double,
                              const kernels::RopeScaling&);

}  // namespace moe::cpu

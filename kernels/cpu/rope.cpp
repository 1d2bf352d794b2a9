// CPU reference rotary position embedding. Angles are computed in double once per row and
// reused across that row's heads.
#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace moe::cpu {

template <typename T>
void rope(T* x, int64_t rows, int64_t num_heads, int64_t head_dim, int64_t seq_len, double theta, bool inverse,
          const int32_t* doc_starts, const kernels::RopeScaling& scaling) {
  const int64_t half = head_dim / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half)), cos_t(static_cast<size_t>(half)),
      sin_t(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[static_cast<size_t>(i)] = kernels::rope_inv_freq(i, head_dim, theta, scaling);
  }
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t r = 0; r < rows; ++r) {
    const double pos = static_cast<double>(r % seq_len - (doc_starts ? doc_starts[r] : 0));
    for (int64_t i = 0; i < half; ++i) {
      double angle = pos * inv_freq[static_cast<size_t>(i)];
      cos_t[static_cast<size_t>(i)] = std::cos(angle);
      sin_t[static_cast<size_t>(i)] = sign * std::sin(angle);
    }
    for (int64_t h = 0; h < num_heads; ++h) {
      T* head = x + (r * num_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        double x1 = head[i], x2 = head[i + half];
        double c = cos_t[static_cast<size_t>(i)], s = sin_t[static_cast<size_t>(i)];
        head[i] = static_cast<T>(x1 * c - x2 * s);
        head[i + half] = static_cast<T>(x1 * s + x2 * c);
      }
    }
  }
}

template void rope<float>(float*, int64_t, int64_t, int64_t, int64_t, double, bool, const int32_t*,
                          const kernels::RopeScaling&);
template void rope<double>(double*, int64_t, int64_t, int64_t, int64_t, double, bool, const int32_t*,
                          const kernels::RopeScaling&);

}  // namespace moe::cpu

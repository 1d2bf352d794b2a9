// What the single-piece benches share: random inputs on a device, and the median time of a call
// between device timer marks after warm-up.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "src/tensor/device_timer.h"
#include "src/tensor/tensor.h"

namespace moe {

// The median of `values` (not empty).
double median_of(std::vector<double> values);

// Uniform values in [lo, hi), as `dtype` on `device`.
inline Tensor random_on(const Shape& shape, DType dtype, Device device, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& x : values) x = dist(rng);
  return Tensor::from_vector(values, shape, dtype, device);
}

// Median milliseconds of `iters` calls of fn, each between two device timer marks, after
// `warmup` untimed calls.
template <class Fn>
double median_ms(Device device, int64_t warmup, int64_t iters, Fn&& fn) {
  for (int64_t i = 0; i < warmup; ++i) fn();
  DeviceTimer timer(device);
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    timer.start();
    fn();
    timer.stop();
    ms.push_back(timer.elapsed_ms());
  }
  return median_of(ms);
}

}  // namespace moe

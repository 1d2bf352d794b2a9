// The rotary inverse frequencies, with the Hugging Face rope scalings ("linear", "llama3"), in one
// function that the CPU reference, the CUDA kernel (device code) and the ops layer share.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/host_device.h"

namespace moe::kernels {

enum class RopeScalingKind : int { none = 0, linear = 1, llama3 = 2 };

// Scaling of the rotary frequencies (transformers' rope_scaling / rope_parameters). linear: every
// frequency divided by factor. llama3: wavelengths longer than original_max_positions /
// low_freq_factor divided by factor, shorter than original_max_positions / high_freq_factor kept,
// the band between interpolated smoothly (Llama 3.1).
struct RopeScaling {
  RopeScalingKind kind = RopeScalingKind::none;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_positions = 8192.0;
};

// theta^(-2i/head_dim), scaled: the angle of pair i at position p is p * rope_inv_freq(i, ...).
MOE_HOST_DEVICE inline double rope_inv_freq(int64_t i, int64_t head_dim, double theta, const RopeScaling& s) {
  const double base = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  if (s.kind == RopeScalingKind::linear) return base / s.factor;
  if (s.kind != RopeScalingKind::llama3) return base;
  const double two_pi = 6.283185307179586476925286766559;
  const double wavelen = two_pi / base;
  const double low_freq_wavelen = s.original_max_positions / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_positions / s.high_freq_factor;
  if (wavelen > low_freq_wavelen) return base / s.factor;
  if (wavelen < high_freq_wavelen) return base;
  const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - smooth) * base / s.factor + smooth * base;
}

}  // namespace moe::kernels

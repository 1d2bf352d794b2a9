// AdamW kernel: elementwise over the range, 8 values per thread through 16-byte accesses when
// all four buffers are aligned; bias corrections are computed once on the host in double.
#include "kernels/cuda/adamw.h"

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

struct AdamWScalars {
  float lr, beta1, beta2, eps, weight_decay, inv_bc1, inv_sqrt_bc2;
};

__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, const AdamWScalars& s) {
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  const float update = (m * s.inv_bc1) / (sqrtf(v) * s.inv_sqrt_bc2 + s.eps);
  p -= s.lr * (s.weight_decay * p + update);
}

// param, grad, m, v f32[n]
__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, AdamWScalars s,
                             bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if (vec) {
    const int64_t groups = n / 8;
    for (int64_t g = tid; g < groups; g += stride) {
      float p[8], gr[8], mm[8], vv[8];
      load8(param + g * 8, p);
      load8(grad + g * 8, gr);
      load8(m + g * 8, mm);
      load8(v + g * 8, vv);
#pragma unroll
      for (int i = 0; i < 8; ++i) adamw_one(p[i], gr[i], mm[i], vv[i], s);
      store8(param + g * 8, p);
      store8(m + g * 8, mm);
      store8(v + g * 8, vv);
    }
    scalar_begin = groups * 8;
  }
  for (int64_t i = scalar_begin + tid; i < n; i += stride) {
    float p = param[i], mm = m[i], vv = v[i];
    adamw_one(p, grad[i], mm, vv, s);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
  }
}

}  // namespace

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const kernels::AdamWParams& c,
                cudaStream_t stream) {
  MOE_CHECK(c.step >= 1, "adamw: step must be >= 1, got ", c.step);
  MOE_CHECK(n >= 0, "adamw: negative size");
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(static_cast<double>(c.beta1), static_cast<double>(c.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(c.beta2), static_cast<double>(c.step));
  // sqrt(v / bc2) = sqrt(v) / sqrt(bc2)
  AdamWScalars s{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, static_cast<float>(1.0 / bc1),
                 static_cast<float>(1.0 / std::sqrt(bc2))};
  const bool vec = aligned_to(param, 16) && aligned_to(grad, 16) && aligned_to(m, 16) && aligned_to(v, 16);
  constexpr int threads = 256;
  adamw_kernel<<<grid_for(vec ? ceil_div(n, 8) : n, threads, 8192), threads, 0, stream>>>(param, grad, m, v, n, s,
                                                                                           vec);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

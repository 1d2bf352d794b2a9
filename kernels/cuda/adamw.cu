// AdamW kernels: elementwise over the range, 8 values per thread through 16-byte accesses when
// the buffers are aligned; bias corrections are computed once on the host in double.
#include "kernels/cuda/adamw.h"

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

using kernels::AdamWRun;
using kernels::AdamWRunKind;
using kernels::FloatType;

namespace {

struct AdamWScalars {
  float lr, beta1, beta2, eps, weight_decay, inv_bc1, inv_sqrt_bc2;
};

AdamWScalars scalars_of(const kernels::AdamWParams& c) {
  MOE_CHECK(c.step >= 1, "adamw: step must be >= 1, got ", c.step);
  const double bc1 = 1.0 - std::pow(static_cast<double>(c.beta1), static_cast<double>(c.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(c.beta2), static_cast<double>(c.step));
  // sqrt(v / bc2) = sqrt(v) / sqrt(bc2)
  return {c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, static_cast<float>(1.0 / bc1),
          static_cast<float>(1.0 / std::sqrt(bc2))};
}

__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, const AdamWScalars& s, float wd) {
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  const float update = (m * s.inv_bc1) / (sqrtf(v) * s.inv_sqrt_bc2 + s.eps);
  p -= s.lr * (wd * p + update);
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
      for (int i = 0; i < 8; ++i) adamw_one(p[i], gr[i], mm[i], vv[i], s, s.weight_decay);
      store8(param + g * 8, p);
      store8(m + g * 8, mm);
      store8(v + g * 8, vv);
    }
    scalar_begin = groups * 8;
  }
  for (int64_t i = scalar_begin + tid; i < n; i += stride) {
    float p = param[i], mm = m[i], vv = v[i];
    adamw_one(p, grad[i], mm, vv, s, s.weight_decay);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
  }
}

constexpr int k_fused_threads = 256;
constexpr int k_fused_steps = 4;  // 8-element groups per thread per tile
constexpr int64_t k_fused_tile = static_cast<int64_t>(k_fused_threads) * 8 * k_fused_steps;

// The run holding element i: the last with begin <= i (runs cover [0, n) in order).
__device__ int64_t find_run(const AdamWRun* runs, int64_t num_runs, int64_t i) {
  int64_t lo = 0, hi = num_runs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (runs[mid].begin <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Blocks stride over tiles of k_fused_tile elements; thread 0 finds the tile's first run, and
// each thread walks forward from it (its elements only increase), so a lookup is a compare.
template <typename Out, bool kVec>
__global__ void adamw_fused_kernel(float* master, const float* grad, float* m, float* v, int64_t n,
                                   const AdamWRun* runs, int64_t num_runs, const float* grad_scale, AdamWScalars s,
                                   Out* out) {
  __shared__ int64_t tile_run;
  const float scale = grad_scale != nullptr ? *grad_scale : 1.0f;
  // A NaN scale (a non-finite gradient norm, or a step the trainer skips) leaves everything as it
  // is. Every thread reads the same value, so the whole grid returns before any barrier.
  if (isnan(scale)) return;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * k_fused_tile; tile < n;
       tile += static_cast<int64_t>(gridDim.x) * k_fused_tile) {
    if (threadIdx.x == 0) tile_run = find_run(runs, num_runs, tile);
    __syncthreads();
    int64_t r = tile_run;
    const int64_t tile_end = tile + k_fused_tile < n ? tile + k_fused_tile : n;
    for (int step = 0; step < k_fused_steps; ++step) {
      const int64_t base = tile + (static_cast<int64_t>(step) * k_fused_threads + threadIdx.x) * 8;
      if (base >= tile_end) break;
      const int count = tile_end - base < 8 ? static_cast<int>(tile_end - base) : 8;
      float p[8], g[8], mm[8], vv[8];
      if (kVec && count == 8) {
        load8(master + base, p);
        load8(grad + base, g);
        load8(m + base, mm);
        load8(v + base, vv);
      } else {
        for (int e = 0; e < count; ++e) {
          p[e] = master[base + e];
          g[e] = grad[base + e];
          mm[e] = m[base + e];
          vv[e] = v[base + e];
        }
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (e >= count) break;
        while (base + e >= runs[r].end) ++r;
        const AdamWRunKind kind = runs[r].kind;
        if (kind == AdamWRunKind::copy) continue;
        adamw_one(p[e], g[e] * scale, mm[e], vv[e], s, kind == AdamWRunKind::decay ? s.weight_decay : 0.0f);
      }
      if (kVec && count == 8) {
        store8(master + base, p);
        store8(m + base, mm);
        store8(v + base, vv);
        if (out != nullptr) store8(out + base, p);
      } else {
        for (int e = 0; e < count; ++e) {
          master[base + e] = p[e];
          m[base + e] = mm[e];
          v[base + e] = vv[e];
          if (out != nullptr) out[base + e] = from_float<Out>(p[e]);
        }
      }
    }
    __syncthreads();  // every thread has read tile_run before the next tile overwrites it
  }
}

template <typename Out>
void launch_fused(float* master, const float* grad, float* m, float* v, int64_t n, const AdamWRun* runs,
                  int64_t num_runs, const float* grad_scale, const AdamWScalars& s, Out* out, cudaStream_t stream) {
  const bool vec = aligned_to(master, 16) && aligned_to(grad, 16) && aligned_to(m, 16) && aligned_to(v, 16) &&
                   (out == nullptr || aligned_to(out, 16));
  const unsigned blocks = grid_for(ceil_div(n, k_fused_tile), 1, 8192);
  if (vec) {
    adamw_fused_kernel<Out, true><<<blocks, k_fused_threads, 0, stream>>>(master, grad, m, v, n, runs, num_runs,
                                                                         grad_scale, s, out);
  } else {
    adamw_fused_kernel<Out, false><<<blocks, k_fused_threads, 0, stream>>>(master, grad, m, v, n, runs, num_runs,
                                                                          grad_scale, s, out);
  }
  CUDA_CHECK_LAUNCH();
}

__global__ void clip_scale_kernel(const double* sum_sq, int64_t num, double max_norm, float* scale) {
  double total = 0;
  for (int64_t i = 0; i < num; ++i) total += sum_sq[i];
  const double norm = sqrt(total);
  if (!isfinite(norm)) {
    scale[0] = __int_as_float(0x7fc00000);  // quiet NaN: adamw_fused skips the update
    return;
  }
  scale[0] = max_norm > 0 && norm > max_norm ? static_cast<float>(max_norm / norm) : 1.0f;
}

// The same arithmetic as cpu::record_skipped_step (one thread).
__global__ void record_skipped_step_kernel(const float* scale, double* state, int64_t step) {
  if (!isnan(scale[0])) {
    state[1] = 0;
    return;
  }
  state[0] += 1;
  state[1] += 1;
  state[2] = fmax(state[2], state[1]);
  if (state[3] == 0) state[3] = static_cast<double>(step);
  state[4] = static_cast<double>(step);
}

}  // namespace

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const kernels::AdamWParams& c,
                cudaStream_t stream) {
  MOE_CHECK(n >= 0, "adamw: negative size");
  const AdamWScalars s = scalars_of(c);
  if (n == 0) return;
  const bool vec = aligned_to(param, 16) && aligned_to(grad, 16) && aligned_to(m, 16) && aligned_to(v, 16);
  constexpr int threads = 256;
  adamw_kernel<<<grid_for(vec ? ceil_div(n, 8) : n, threads, 8192), threads, 0, stream>>>(param, grad, m, v, n, s,
                                                                                           vec);
  CUDA_CHECK_LAUNCH();
}

void adamw_fused(float* master, const float* grad, float* m, float* v, int64_t n, const AdamWRun* runs,
                 int64_t num_runs, const float* grad_scale, const kernels::AdamWParams& c, void* out,
                 FloatType out_type, cudaStream_t stream) {
  MOE_CHECK(n >= 0 && num_runs >= 0, "adamw_fused: negative size");
  const AdamWScalars s = scalars_of(c);
  if (n == 0) return;
  MOE_CHECK(num_runs > 0, "adamw_fused: no runs for ", n, " elements");
  if (out == nullptr || out_type == FloatType::f32) {
    launch_fused(master, grad, m, v, n, runs, num_runs, grad_scale, s, static_cast<float*>(out), stream);
  } else {
    launch_fused(master, grad, m, v, n, runs, num_runs, grad_scale, s, static_cast<__nv_bfloat16*>(out), stream);
  }
}

void clip_scale(const double* sum_sq, int64_t num, double max_norm, float* scale, cudaStream_t stream) {
  clip_scale_kernel<<<1, 1, 0, stream>>>(sum_sq, num, max_norm, scale);
  CUDA_CHECK_LAUNCH();
}

void record_skipped_step(const float* scale, double* state, int64_t step, cudaStream_t stream) {
  record_skipped_step_kernel<<<1, 1, 0, stream>>>(scale, state, step);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda

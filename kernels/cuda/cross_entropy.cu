// Cross-entropy kernels: one block per row; the forward is a single online (max, sum) pass
// merged across the block, the backward recomputes softmax from the saved lse. Forward and
// backward at once (the model's head, whose gradient scale is known before its forward) copy the
// row into shared memory first, so that it is read from memory once for both.
#include "kernels/cuda/cross_entropy.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_info.h"

namespace moe::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int k_threads = 512;

// Merge of every thread's (max, sum) across the block; all threads get the result.
__device__ MaxSum block_merge(MaxSum v) {
  __shared__ float s_m[k_threads / k_warp], s_s[k_threads / k_warp];
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  v = warp_merge(v);
  if (lane == 0) {
    s_m[warp] = v.m;
    s_s[warp] = v.s;
  }
  __syncthreads();
  MaxSum total{-INFINITY, 0.0f};
  for (int w = 0; w < k_threads / k_warp; ++w) total = merge(total, MaxSum{s_m[w], s_s[w]});
  return total;
}

// (max, sum of exp(v - max)) of N values, to merge into a row's running pair.
template <int N>
__device__ __forceinline__ MaxSum max_sum_of(const float (&v)[N]) {
  float m = v[0];
#pragma unroll
  for (int i = 1; i < N; ++i) m = fmaxf(m, v[i]);
  if (m == -INFINITY) return MaxSum{m, 0.0f};  // all -inf: exp(-inf - -inf) would be NaN
  float s = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) s += __expf(v[i] - m);
  return MaxSum{m, s};
}

// dlogits of N values from column c on, in place: scale * (softmax - [column == target column]),
// zeros where the row is ignored (target < 0).
template <int N>
__device__ __forceinline__ void gradient_of(float (&v)[N], int64_t c, int32_t target, int64_t target_col,
                                            float row_lse, float scale) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    v[i] = target < 0 ? 0.0f : scale * (__expf(v[i] - row_lse) - (c + i == target_col ? 1.0f : 0.0f));
  }
}

// The loss of a row from its log-sum-exp and its target's logit (read only where the target is a
// local column), as the forward kernel writes it.
template <class TargetLogit>
__device__ __forceinline__ float row_loss(float row_lse, int32_t target, int64_t vocab, int64_t vocab_start,
                                          int64_t bound, TargetLogit&& target_logit) {
  const int64_t col = static_cast<int64_t>(target) - vocab_start;
  if (target < 0) return 0.0f;
  if (target >= bound) return __int_as_float(0x7fc00000);
  if (col < 0 || col >= vocab) return row_lse;  // another shard holds the target
  return row_lse - target_logit(col);
}

// logits[rows, vocab] -> loss[rows], lse[rows]; one block per row, N values per access. The
// logits are columns [vocab_start, vocab_start + vocab) of a vocabulary of `bound` ids.
template <int N>
__global__ void __launch_bounds__(k_threads) cross_entropy_forward_kernel(const bf16* logits, const int32_t* targets,
                                                                         float* loss, float* lse, int64_t vocab,
                                                                         int64_t vocab_start, int64_t bound) {
  const int64_t row = blockIdx.x;
  const bf16* lr = logits + row * vocab;
  MaxSum st{-INFINITY, 0.0f};
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < vocab; c += static_cast<int64_t>(k_threads) * N) {
    float v[N];
    load_n<N>(lr + c, v);
    st = merge(st, max_sum_of(v));
  }
  st = block_merge(st);
  if (threadIdx.x == 0) {
    const float row_lse = st.m + logf(st.s);
    lse[row] = row_lse;
    loss[row] = row_loss(row_lse, targets[row], vocab, vocab_start, bound,
                         [&](int64_t col) { return __bfloat162float(lr[col]); });
  }
}

// dlogits[row, c] = scale * (exp(logit - lse) - [c == target - vocab_start]); zero row when
// target < 0 (a target of another shard matches no local column)
template <int N>
__global__ void __launch_bounds__(k_threads) cross_entropy_backward_kernel(const bf16* logits, const int32_t* targets,
                                                                          const float* lse, float scale,
                                                                          bf16* dlogits, int64_t vocab,
                                                                          int64_t vocab_start) {
  const int64_t row = blockIdx.x;
  const bf16* lr = logits + row * vocab;
  bf16* dr = dlogits + row * vocab;
  const int32_t target = targets[row];
  const int64_t col = static_cast<int64_t>(target) - vocab_start;
  const float row_lse = lse[row];
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < vocab; c += static_cast<int64_t>(k_threads) * N) {
    float v[N] = {};
    if (target >= 0) load_n<N>(lr + c, v);  // an ignored row's gradient is zeros: nothing to read
    gradient_of(v, c, target, col, row_lse, scale);
    store_n<N>(dr + c, v);
  }
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(smem))),
               "l"(gmem)
               : "memory");
}

// Forward and backward of row blockIdx.x at once (unsharded, vocab a multiple of 8, 16-byte
// aligned rows): the row's 16-byte chunks are copied into shared memory (all in flight together),
// its (max, sum) merged from there; loss and lse as the forward kernel writes them, and
// dlogits = scale * (softmax - onehot(target)) (zeros where target < 0) as the backward kernel
// does. dlogits may be logits itself: the row is read whole before any of it is written.
__global__ void __launch_bounds__(k_threads)
    cross_entropy_with_grad_kernel(const bf16* logits, const int32_t* targets, float* loss, float* lse, float scale,
                                   bf16* dlogits, int64_t vocab) {
  extern __shared__ Bf16x8 row_chunks[];  // [vocab / 8]
  const int64_t row = blockIdx.x, chunks = vocab / 8;
  const bf16* lr = logits + row * vocab;
  for (int64_t c = threadIdx.x; c < chunks; c += k_threads) cp_async_16(row_chunks + c, lr + c * 8);
  asm volatile("cp.async.commit_group;\ncp.async.wait_all;" ::: "memory");
  __syncthreads();
  MaxSum st{-INFINITY, 0.0f};
  for (int64_t c = threadIdx.x; c < chunks; c += k_threads) {
    float v[8];
    unpack8(row_chunks[c], v);
    st = merge(st, max_sum_of(v));
  }
  st = block_merge(st);
  const float row_lse = st.m + logf(st.s);
  const int32_t target = targets[row];
  if (threadIdx.x == 0) {
    lse[row] = row_lse;
    loss[row] = row_loss(row_lse, target, vocab, 0, vocab, [&](int64_t col) {
      return __bfloat162float(reinterpret_cast<const bf16*>(row_chunks)[col]);
    });
  }
  bf16* dr = dlogits + row * vocab;
  for (int64_t c = threadIdx.x; c < chunks; c += k_threads) {
    float v[8];
    unpack8(row_chunks[c], v);
    gradient_of(v, c * 8, target, target, row_lse, scale);
    store8(dr + c * 8, v);
  }
}

bool vec_ok(int64_t vocab, const void* a, const void* b) {
  return vocab % 8 == 0 && aligned_to(a, 16) && (!b || aligned_to(b, 16));
}

void check_sizes(int64_t rows, int64_t vocab, int64_t vocab_start, int64_t vocab_full) {
  MOE_CHECK(rows >= 0 && rows <= INT32_MAX && vocab > 0, "cross_entropy: bad shape [", rows, ",", vocab, "]");
  MOE_CHECK(vocab_full == 0 ? vocab_start == 0 : vocab_start >= 0 && vocab_start + vocab <= vocab_full,
            "cross_entropy: vocabulary shard [", vocab_start, ",", vocab_start + vocab, ") of ", vocab_full, " ids");
}

}  // namespace

void cross_entropy_forward(const bf16* logits, const int32_t* targets, float* loss, float* lse, int64_t rows,
                           int64_t vocab, int64_t vocab_start, int64_t vocab_full, cudaStream_t stream) {
  check_sizes(rows, vocab, vocab_start, vocab_full);
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>(rows);
  const int64_t bound = vocab_full > 0 ? vocab_full : vocab;
  if (vec_ok(vocab, logits, nullptr)) {
    cross_entropy_forward_kernel<8><<<blocks, k_threads, 0, stream>>>(logits, targets, loss, lse, vocab, vocab_start,
                                                                      bound);
  } else {
    cross_entropy_forward_kernel<1><<<blocks, k_threads, 0, stream>>>(logits, targets, loss, lse, vocab, vocab_start,
                                                                      bound);
  }
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(const bf16* logits, const int32_t* targets, const float* lse, float scale,
                            bf16* dlogits, int64_t rows, int64_t vocab, int64_t vocab_start, int64_t vocab_full,
                            cudaStream_t stream) {
  check_sizes(rows, vocab, vocab_start, vocab_full);
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>(rows);
  if (vec_ok(vocab, logits, dlogits)) {
    cross_entropy_backward_kernel<8><<<blocks, k_threads, 0, stream>>>(logits, targets, lse, scale, dlogits, vocab,
                                                                       vocab_start);
  } else {
    cross_entropy_backward_kernel<1><<<blocks, k_threads, 0, stream>>>(logits, targets, lse, scale, dlogits, vocab,
                                                                       vocab_start);
  }
  CUDA_CHECK_LAUNCH();
}

bool cross_entropy_with_grad(const bf16* logits, const int32_t* targets, float* loss, float* lse, float scale,
                             bf16* dlogits, int64_t rows, int64_t vocab, cudaStream_t stream) {
  check_sizes(rows, vocab, 0, 0);
  // The row and block_merge's static arrays share the block's shared memory.
  const int64_t smem = vocab * static_cast<int64_t>(sizeof(bf16));
  const int64_t static_smem = 2 * (k_threads / k_warp) * static_cast<int64_t>(sizeof(float));
  if (!vec_ok(vocab, logits, dlogits) || smem + static_smem > max_shared_bytes_per_block()) return false;
  if (rows == 0) return true;
  static uint64_t configured_devices = 0;  // once per device: the most it allows, for any vocabulary
  if (first_use_on_current_device(configured_devices)) {
    CUDA_CHECK(cudaFuncSetAttribute(cross_entropy_with_grad_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    max_shared_bytes_per_block() - static_cast<int>(static_smem)));
  }
  cross_entropy_with_grad_kernel<<<static_cast<unsigned>(rows), k_threads, static_cast<size_t>(smem), stream>>>(
      logits, targets, loss, lse, scale, dlogits, vocab);
  CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace moe::cuda

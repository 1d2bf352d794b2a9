// Softmax cross-entropy on the GPU over bf16 logits rows (vocab-sized), f32 loss and
// log-sum-exp; targets < 0 are ignored rows.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// logits[rows,vocab], targets i32[rows] -> loss[rows] (0 where target < 0), lse[rows] (all rows).
// A target >= vocab gives a NaN loss (not checked on the host: that would synchronise).
void cross_entropy_forward(const __nv_bfloat16* logits, const int32_t* targets, float* loss, float* lse,
                           int64_t rows, int64_t vocab, cudaStream_t stream);
// dlogits[rows,vocab] = scale * (softmax(logits) - onehot(target)); zero rows where target < 0.
void cross_entropy_backward(const __nv_bfloat16* logits, const int32_t* targets, const float* lse, float scale,
                            __nv_bfloat16* dlogits, int64_t rows, int64_t vocab, cudaStream_t stream);

}  // namespace moe::cuda

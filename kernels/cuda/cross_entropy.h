// Softmax cross-entropy on the GPU over bf16 logits rows (vocab-sized), f32 loss and
// log-sum-exp; targets < 0 are ignored rows.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::cuda {

// Vocabulary sharding (tensor parallelism): the logits hold columns [vocab_start, vocab_start +
// vocab) of a vocabulary of vocab_full ids; vocab_full == 0 means unsharded (vocab_start 0).

// logits[rows,vocab], targets i32[rows] -> lse[rows] (all rows, local columns), loss[rows]:
// 0 where target < 0, lse - logit[target - vocab_start] where the target is local, lse where
// another shard holds it. A target >= vocab_full (>= vocab unsharded) gives a NaN loss (not
// checked on the host: that would synchronise).
void cross_entropy_forward(const __nv_bfloat16* logits, const int32_t* targets, float* loss, float* lse,
                           int64_t rows, int64_t vocab, int64_t vocab_start, int64_t vocab_full, cudaStream_t stream);
// dlogits[rows,vocab] = scale * (exp(logits - lse) - onehot(target - vocab_start)), the onehot
// only where the target is local; zero rows where target < 0.
void cross_entropy_backward(const __nv_bfloat16* logits, const int32_t* targets, const float* lse, float scale,
                            __nv_bfloat16* dlogits, int64_t rows, int64_t vocab, int64_t vocab_start,
                            int64_t vocab_full, cudaStream_t stream);

// Both at once, unsharded: loss, lse as the forward writes them and dlogits as the backward does,
// each row read from memory once (staged whole in shared memory; dlogits may be logits itself).
// False, with nothing run, where the rows do not fit the shared memory or are not 16-byte
// vectors (vocab % 8, alignment): then the caller runs the two kernels.
bool cross_entropy_with_grad(const __nv_bfloat16* logits, const int32_t* targets, float* loss, float* lse,
                             float scale, __nv_bfloat16* dlogits, int64_t rows, int64_t vocab, cudaStream_t stream);

}  // namespace moe::cuda

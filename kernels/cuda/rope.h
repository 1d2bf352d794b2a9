// Rotary position embedding on the GPU, in place on bf16 rows (GPT-NeoX layout: pairs
// (i, i + hd/2) of each head rotated by angle pos * theta^(-2i/hd)).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/rope_freq.h"

namespace moe::cuda {

struct RopeShape {
  int64_t rows = 0, num_heads = 0, head_dim = 0, seq_len = 0;  // position of row t is t % seq_len
};

// x[rows, num_heads*head_dim] rotated in place; inverse rotates by the negative angle. With
// doc_starts i32[rows] (nullptr = none) the position of row t is t % seq_len - doc_starts[t].
// The frequencies are kernels::rope_inv_freq's (the CPU reference's), scaled by `scaling`.
void rope(__nv_bfloat16* x, const RopeShape& shape, float theta, bool inverse, const int32_t* doc_starts,
          const kernels::RopeScaling& scaling, cudaStream_t stream);
// The forward rotation with row t at position positions[t] (i32[rows]; cached decoding).
void rope_at(__nv_bfloat16* x, int64_t rows, int64_t num_heads, int64_t head_dim, const int32_t* positions,
             float theta, const kernels::RopeScaling& scaling, cudaStream_t stream);

}  // namespace moe::cuda

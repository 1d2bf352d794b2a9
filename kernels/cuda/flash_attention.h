// Launchers of the tensor-core flash-attention kernels (head dims 64 and 128), called by the
// public entry points of attention.h, which fall back to the fp32 kernels for other shapes.
#pragma once

#include <cstddef>
#include <initializer_list>

#include "kernels/cuda/attention.h"

namespace moe::cuda {

// Whether the flash kernels take this problem: head dim 64 or 128 and every pointer 16-byte
// aligned (whole rows of bf16 tensors from the pool always are).
bool flash_attention_supported(const kernels::AttentionShape& dims, std::initializer_list<const void*> pointers);

// Contract of attention_forward (attention.h).
void flash_attention_forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             __nv_bfloat16* out, float* lse, const kernels::AttentionShape& dims,
                             const int32_t* doc_starts, cudaStream_t stream);

// f32 elements of the dQ accumulator [B*S, Hq*hd].
size_t flash_attention_dq_accum_numel(const kernels::AttentionShape& dims);

// Contract of attention_backward; delta[B, Hq, S] and dq_accum (flash_attention_dq_accum_numel)
// are scratch, both overwritten. Kernels: delta = rowsum(dout * out) with dq_accum zeroed; the
// main kernel over key blocks (dK, dV in registers, dQ atomically added in fp32); dq = scale dq_accum.
void flash_attention_backward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                              const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* dout,
                              __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, float* delta, float* dq_accum,
                              const kernels::AttentionShape& dims, const int32_t* doc_starts, cudaStream_t stream);

}  // namespace moe::cuda

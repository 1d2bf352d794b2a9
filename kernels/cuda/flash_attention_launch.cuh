// Host-side helpers shared by the flash-attention launchers (flash_attention_*.cu): launch
// parameters from the public dims, and the bf16 pointers as raw bits.
#pragma once

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention_tiles.cuh"

namespace moe::cuda::flash {

inline const bf16_bits* bits(const __nv_bfloat16* p) { return reinterpret_cast<const bf16_bits*>(p); }
inline bf16_bits* bits(__nv_bfloat16* p) { return reinterpret_cast<bf16_bits*>(p); }

// Sizes and inputs of a launch (the dims were checked by attention*.cu's make_geometry first).
inline Params params_of(const kernels::AttentionShape& d, const __nv_bfloat16* q, const __nv_bfloat16* k,
                        const __nv_bfloat16* v) {
  Params p = make_params(static_cast<int>(d.batch), static_cast<int>(d.seq_len), static_cast<int>(d.num_heads),
                         static_cast<int>(d.num_kv_heads), static_cast<int>(d.head_dim), d.causal,
                         static_cast<int>(d.kv_len()));
  p.q = bits(q);
  p.k = bits(k);
  p.v = bits(v);
  return p;
}

// Opt a kernel into its dynamic shared memory (above the default 48 KB).
template <class Kernel>
void set_shared_bytes(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace moe::cuda::flash

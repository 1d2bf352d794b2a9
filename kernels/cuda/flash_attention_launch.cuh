// Host-side helpers shared by the flash-attention launchers (flash_attention_*.cu): launch
// parameters from the public dims, the bf16 pointers as raw bits, the grid's layout.
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

// The grid of (ranks, heads, batches) blocks laid out as (heads, batches, ranks): the hardware
// starts blocks in the order of their linear index (x fastest), so every (head, batch) slice's
// rank-0 block (its heaviest under the causal mask) starts before any rank-1 block, and so on, and
// the short blocks fill the tail of the last wave (list scheduling, longest first); with the rank
// fastest, heavy blocks of the last slices started late. Block coordinates stay in the special
// registers (an index computed from a linear one spills the head-dim 128 kernels).
inline dim3 longest_first_grid(int64_t ranks, int64_t heads, int64_t batches) {
  MOE_CHECK(ranks <= 65535, "flash attention: ", ranks, " blocks a sequence exceed the grid's 65535");
  MOE_CHECK(batches <= 65535, "flash attention: ", batches, " sequences exceed the grid's 65535");
  return dim3(static_cast<unsigned>(heads), static_cast<unsigned>(batches), static_cast<unsigned>(ranks));
}

// Opt a kernel into its dynamic shared memory (above the default 48 KB).
template <class Kernel>
void set_shared_bytes(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace moe::cuda::flash

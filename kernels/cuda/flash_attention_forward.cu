// Launchers of the tensor-core flash-attention forward (the block body is in
// flash_attention_forward.cuh): one kernel per specialised head dim; causal is a runtime flag.
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_forward.cuh"
#include "kernels/cuda/flash_attention_launch.cuh"

namespace moe::cuda {

namespace flash {

namespace {

// grid (Hq, B, query blocks), longest_first_grid: the last query blocks see the most keys under the
// causal mask, and every slice's last block starts before any slice's second to last.
template <class T>
__global__ void __launch_bounds__(T::kThreads) forward_kernel(const Params p) {
  extern __shared__ __align__(128) char smem[];
  forward_grid_block<T>(p, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z),
                        static_cast<int>(gridDim.z), static_cast<int>(threadIdx.x), smem);
}

template <class T>
void launch_forward(const Params& p, cudaStream_t stream) {
  set_shared_bytes(forward_kernel<T>, T::kSmemBytes);
  const dim3 grid = longest_first_grid(forward_query_blocks<T>(p), p.num_heads, p.batch);
  forward_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

}  // namespace flash

bool flash_attention_supported(const kernels::AttentionShape& dims, std::initializer_list<const void*> pointers) {
  if (dims.head_dim != 64 && dims.head_dim != 128) return false;
  for (const void* p : pointers) {
    if (!aligned_to(p, 16)) return false;
  }
  return true;
}

void flash_attention_forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             __nv_bfloat16* out, float* lse, const kernels::AttentionShape& dims,
                             const int32_t* doc_starts, cudaStream_t stream) {
  flash::Params p = flash::params_of(dims, q, k, v);
  p.out = flash::bits(out);
  p.lse = lse;
  p.doc_starts = doc_starts;
  switch (dims.head_dim) {
    case 64: return flash::launch_forward<flash::ForwardHd64>(p, stream);
    case 128: return flash::launch_forward<flash::ForwardHd128>(p, stream);
    default: MOE_FAIL("flash attention: head_dim ", dims.head_dim, " has no kernel (64 or 128)");
  }
}

}  // namespace moe::cuda

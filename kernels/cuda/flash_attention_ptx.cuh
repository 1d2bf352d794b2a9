// The GPU primitives of the flash-attention kernels (sm_80+ PTX: ldmatrix, mma.sync bf16,
// cp.async): one small function each, so that tests/kernels/warp_emulator.h can stand in for them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#define MOE_FLASH_FN __device__ __forceinline__
#define MOE_FLASH_UNROLL _Pragma("unroll")
#define MOE_FLASH_UNROLL_2 _Pragma("unroll 2")

namespace moe::cuda::flash {

using bf16_bits = uint16_t;  // bf16 storage; arithmetic happens in fp32 registers

// Four 8x8 b16 matrices: lanes 8i..8i+7 give the 16-byte row addresses of matrix i; lane l
// receives, in r[i], row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i (low half first).
MOE_FLASH_FN void ldsm_x4(uint32_t (&r)[4], const bf16_bits* smem) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// As ldsm_x4, transposed: lane l receives column l/4, rows 2(l%4) and 2(l%4)+1 of matrix i.
MOE_FLASH_FN void ldsm_x4_trans(uint32_t (&r)[4], const bf16_bits* smem) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d[16x8] += a[16x16] @ b[16x8], bf16 inputs, fp32 accumulation, in the m16n8k16 fragment
// layouts (g = lane/4, t = lane%4): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
// a3 (g+8, 2t+8..); b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g); d0,d1 (g, 2t..), d2,d3 (g+8, 2t..).
MOE_FLASH_FN void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without passing through registers; valid = false writes zeros and
// reads nothing (the source address must still be a mapped one).
MOE_FLASH_FN void cp_async_16(bf16_bits* smem, const bf16_bits* gmem, bool valid) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}
// 4 bytes global -> shared (through L1), valid = false writes zeros.
MOE_FLASH_FN void cp_async_4(void* smem, const void* gmem, bool valid) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}
MOE_FLASH_FN void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
MOE_FLASH_FN void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

MOE_FLASH_FN void sync_block() { __syncthreads(); }
MOE_FLASH_FN float shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }

// 2^x (ex2.approx: ~2 ulp, exp2(-inf) = 0).
MOE_FLASH_FN float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// p[0] += a, p[1] += b atomically, p 8-byte aligned: one `red.global.add.v2.f32` on sm_90 (the
// two floats one L2 operation), two atomics before it.
MOE_FLASH_FN void atomic_add_f32x2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Two floats rounded to bf16 (nearest even) in one register, lo in the low half.
MOE_FLASH_FN uint32_t pack_bf16x2(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
MOE_FLASH_FN float bf16_to_float(bf16_bits x) { return __uint_as_float(static_cast<uint32_t>(x) << 16); }

}  // namespace moe::cuda::flash

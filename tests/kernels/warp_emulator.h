// A host emulation of the GPU primitives of kernels/cuda/flash_attention_ptx.cuh, so that the
// flash-attention kernel bodies run on the CPU: each thread of a block is a fiber, warp collectives
// (ldmatrix, mma.sync, shuffles) and block barriers complete once every participant has arrived.
#pragma once

#define MOE_FLASH_EMULATED 1
#define MOE_FLASH_FN inline
#define MOE_FLASH_UNROLL
#define MOE_FLASH_UNROLL_2

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace moe::cuda::flash {

using bf16_bits = uint16_t;

// Same names and semantics as the device versions (flash_attention_ptx.cuh). Misuse that the
// hardware would not forgive (a collective some lanes of a warp skip, a barrier some threads
// skip, an address outside shared memory or outside the registered global buffers) throws from
// moe::test::emu::run_grid.
void ldsm_x4(uint32_t (&r)[4], const bf16_bits* smem);
void ldsm_x4_trans(uint32_t (&r)[4], const bf16_bits* smem);
void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
// A copy lands at issue or at the wait that covers it (chosen at random per copy), so a kernel
// that reads a buffer before waiting, or refills one that others still read, shows it.
void cp_async_16(bf16_bits* smem, const bf16_bits* gmem, bool valid);
void cp_async_4(void* smem, const void* gmem, bool valid);
void cp_async_commit();
void cp_async_wait_pending(int pending);
template <int kPending>
inline void cp_async_wait() {
  cp_async_wait_pending(kPending);
}
void sync_block();
float shfl_xor(float v, int lane_mask);
inline float fast_exp2(float x) { return std::exp2(x); }
void atomic_add_f32x2(float* p, float a, float b);  // p must be 8-byte aligned, as the vector reduction needs
uint32_t pack_bf16x2(float lo, float hi);
float bf16_to_float(bf16_bits x);

}  // namespace moe::cuda::flash

namespace moe::test::emu {

struct Dim3 {
  int x = 1, y = 1, z = 1;
};

// A global buffer the emulated kernel may touch (cp.async sources, atomics).
struct Range {
  const void* begin;
  size_t bytes;
};

// Runs body(block, tid, smem) for every block of `grid` (in order), `threads` threads each (a
// multiple of 32) over `smem_bytes` of shared memory filled with 0xff (bf16 NaN) at block start.
// Warps advance independently, in bursts drawn from `seed` (one may run far ahead of another up
// to a barrier), so a missing barrier or an early buffer refill changes the results.
void run_grid(Dim3 grid, int threads, size_t smem_bytes, const std::vector<Range>& globals, uint64_t seed,
              const std::function<void(Dim3 block, int tid, char* smem)>& body);

}  // namespace moe::test::emu

// Per-device cuBLAS handles: created lazily for the current device, kept for the process
// lifetime (destroying them at exit races the CUDA runtime's own teardown).
#include "kernels/cuda/cublas_handle.h"

#include <array>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/runtime.h"

namespace moe::cuda {

namespace {
constexpr int k_max_devices = 64;
// One handle per device and stream (main, side): a handle's default workspace is not shared
// between GEMMs running at once on two streams.
std::array<std::array<cublasHandle_t, 2>, k_max_devices> g_handles{};
}  // namespace

cublasHandle_t cublas_handle() {
  cudaStream_t stream = compute_stream();  // selects device 0 when none was chosen yet
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  MOE_CHECK(device >= 0 && device < k_max_devices, "CUDA device ordinal ", device, " out of range");
  cublasHandle_t& handle = g_handles[static_cast<size_t>(device)][on_side_stream() ? 1 : 0];
  if (!handle) {
    CUBLAS_CHECK(cublasCreate(&handle));
    // bf16 inputs with CUBLAS_COMPUTE_32F: tensor cores, fp32 accumulation; no TF32 downgrade
    // applies because no f32 inputs reach cuBLAS.
    CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  }
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  return handle;
}

}  // namespace moe::cuda

// Cached device attributes for launch-size heuristics (queried once per device ordinal).
// The cache is process-local; the engine drives its GPUs from one host thread.
#include "kernels/cuda/device_info.h"

#include <array>

#include "kernels/cuda/cuda_check.h"

namespace moe::cuda {

namespace {
constexpr int k_max_devices = 64;
std::array<int, k_max_devices> g_sm_count{};
}  // namespace

int multiprocessor_count() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  MOE_CHECK(device >= 0 && device < k_max_devices, "CUDA device ordinal ", device, " out of range");
  int& count = g_sm_count[static_cast<size_t>(device)];
  if (count == 0) CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

std::string device_name() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

}  // namespace moe::cuda

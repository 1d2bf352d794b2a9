// Cached device attributes for launch-size heuristics (queried once per device ordinal).
// The cache is process-local; the engine drives its GPUs from one host thread.
#include "kernels/cuda/device_info.h"

#include <array>

#include "kernels/cuda/cuda_check.h"

namespace moe::cuda {

namespace {
constexpr int k_max_devices = 64;
std::array<int, k_max_devices> g_sm_count{};
std::array<int, k_max_devices> g_shared_bytes{};

}  // namespace

int current_device() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  MOE_CHECK(device >= 0 && device < k_max_devices, "CUDA device ordinal ", device, " out of range");
  return device;
}

bool first_use_on_current_device(uint64_t& devices) {
  const uint64_t bit = uint64_t{1} << current_device();
  if ((devices & bit) != 0) return false;
  devices |= bit;
  return true;
}

namespace {
// The current device's attribute, cached in `cache` (0 = not yet queried).
int cached_attribute(std::array<int, k_max_devices>& cache, cudaDeviceAttr attribute) {
  const int device = current_device();
  int& value = cache[static_cast<size_t>(device)];
  if (value == 0) CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}
}  // namespace

int multiprocessor_count() { return cached_attribute(g_sm_count, cudaDevAttrMultiProcessorCount); }

int max_shared_bytes_per_block() { return cached_attribute(g_shared_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin); }

std::string device_name() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

}  // namespace moe::cuda

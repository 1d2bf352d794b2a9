// cuda_device_name(): the driver's name of the current device, through kernels/cuda/device_info
// (the tensor layer is the lowest one that both CUDA and CPU-only builds compile).
#include "src/tensor/device_name.h"

#include "src/tensor/tensor.h"
#if MOE_WITH_CUDA
#include "kernels/cuda/device_info.h"
#endif

namespace moe {

std::string cuda_device_name() {
#if MOE_WITH_CUDA
  if (cuda_available()) return cuda::device_name();
#endif
  return "";
}

}  // namespace moe

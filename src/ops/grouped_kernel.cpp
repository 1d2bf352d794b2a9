// Which kernel the CUDA grouped matmuls run (the Hopper wgmma kernel, its 128-wide-tile variant, or
// the portable mma.sync one): chosen automatically, or named by benchmarks and tests that compare them.
#include <string>

#include "src/ops/ops.h"
#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/grouped_gemm.h"
#endif

namespace moe::ops {

void set_grouped_matmul_kernel(const std::string& name) {
  MOE_CHECK(name == "auto" || name == "mma_sync" || name == "wgmma" || name == "wgmma_narrow",
            "grouped matmul kernel '", name, "' is not one of auto, mma_sync, wgmma, wgmma_narrow");
#if MOE_WITH_CUDA
  cuda::set_grouped_gemm_kernel(name == "wgmma"          ? cuda::GroupedGemmKernel::wgmma
                                : name == "wgmma_narrow" ? cuda::GroupedGemmKernel::wgmma_narrow
                                : name == "mma_sync"     ? cuda::GroupedGemmKernel::mma_sync
                                                         : cuda::GroupedGemmKernel::automatic);
#else
  MOE_CHECK(name == "auto", "grouped matmul kernel '", name, "' needs a CUDA build");
#endif
}

std::string grouped_matmul_kernel(Device device) {
#if MOE_WITH_CUDA
  if (device.is_cuda()) return cuda::grouped_gemm_kernel_name();
#endif
  return "cpu";
}

}  // namespace moe::ops

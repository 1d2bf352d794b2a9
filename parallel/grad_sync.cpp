// Bucketed data-parallel gradient averaging. Each bucket is a view of the flat buffer, averaged
// with the communicator's all_reduce_avg (NCCL fuses the 1/size scale into the collective).
#include "parallel/grad_sync.h"

#include <algorithm>

namespace moe {

// grads[n] <- mean over ranks of grads[n], bucket by bucket
void average_gradients(Communicator& comm, Tensor& grads, size_t bucket_bytes) {
  MOE_CHECK(grads.defined(), "average_gradients: gradient buffer is undefined");
  MOE_CHECK(is_floating(grads.dtype()), "average_gradients: gradients must be floating point, got ",
            dtype_name(grads.dtype()));
  MOE_CHECK(bucket_bytes > 0, "average_gradients: bucket size must be positive");
  if (comm.size() == 1) return;
  Tensor flat = grads.view({grads.numel()});
  int64_t bucket_numel = std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes / dtype_size(grads.dtype())));
  for (int64_t begin = 0; begin < flat.numel(); begin += bucket_numel) {
    Tensor bucket = flat.rows(begin, std::min(flat.numel(), begin + bucket_numel));
    comm.all_reduce_avg(bucket);
  }
}

}  // namespace moe

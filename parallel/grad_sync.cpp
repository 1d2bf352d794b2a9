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

void reduce_scatter_sharded(Communicator& comm, Tensor& grads, int64_t first, const std::vector<int64_t>& borders,
                            size_t bucket_bytes) {
  const int size = comm.size(), me = comm.rank();
  MOE_CHECK(static_cast<int>(borders.size()) == size + 1, "reduce_scatter_sharded: need ", size + 1,
            " shard borders, got ", borders.size());
  MOE_CHECK(bucket_bytes > 0, "reduce_scatter_sharded: bucket size must be positive");
  const int64_t n = grads.numel(), last = first + n;
  Tensor flat = grads.view({n});
  const int64_t bucket = std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes / dtype_size(grads.dtype())));
  std::vector<int64_t> counts(static_cast<size_t>(size));
  for (int64_t b0 = first; b0 < last; b0 += bucket) {
    const int64_t b1 = std::min(last, b0 + bucket);
    MOE_CHECK(borders.front() <= b0 && borders.back() >= b1, "reduce_scatter_sharded: flat elements [", b0, ", ", b1,
              ") lie outside the shards [", borders.front(), ", ", borders.back(), ")");
    int64_t mine = 0;  // this rank's part of the bucket starts after the lower ranks' parts
    for (int r = 0; r < size; ++r) {
      const int64_t part = std::max<int64_t>(0, std::min(b1, borders[r + 1]) - std::max(b0, borders[r]));
      counts[static_cast<size_t>(r)] = part;
      if (r < me) mine += part;
    }
    Tensor in = flat.rows(b0 - first, b1 - first);
    Tensor out = in.rows(mine, mine + counts[static_cast<size_t>(me)]);
    comm.reduce_scatter_v_sum(in, counts, out);
  }
}

}  // namespace moe

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

void reduce_scatter_sharded(Communicator& comm, const Tensor& grads, int64_t first,
                            const std::vector<int64_t>& borders, Tensor& out, size_t bucket_bytes) {
  const int size = comm.size(), me = comm.rank();
  MOE_CHECK(static_cast<int>(borders.size()) == size + 1, "reduce_scatter_sharded: need ", size + 1,
            " shard borders, got ", borders.size());
  MOE_CHECK(bucket_bytes > 0, "reduce_scatter_sharded: bucket size must be positive");
  auto overlap = [](int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
    return std::max<int64_t>(0, std::min(a1, b1) - std::max(a0, b0));
  };
  const int64_t n = grads.numel(), last = first + n;
  const int64_t mine_begin = std::max(first, borders[me]);
  MOE_CHECK(out.numel() == overlap(first, last, borders[me], borders[me + 1]), "reduce_scatter_sharded: out has ",
            out.numel(), " elements, this rank's part of the range has ",
            overlap(first, last, borders[me], borders[me + 1]));
  Tensor flat = grads.view({n}), out_flat = out.view({out.numel()});
  const int64_t bucket = std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes / dtype_size(grads.dtype())));
  std::vector<int64_t> counts(static_cast<size_t>(size));
  for (int64_t b0 = first; b0 < last; b0 += bucket) {
    const int64_t b1 = std::min(last, b0 + bucket);
    for (int r = 0; r < size; ++r) counts[static_cast<size_t>(r)] = overlap(b0, b1, borders[r], borders[r + 1]);
    MOE_CHECK(borders.front() <= b0 && borders.back() >= b1, "reduce_scatter_sharded: flat elements [", b0, ", ", b1,
              ") lie outside the shards [", borders.front(), ", ", borders.back(), ")");
    const int64_t at = std::max(b0, borders[me]) - mine_begin;  // this bucket's part in out
    Tensor part = counts[static_cast<size_t>(me)] > 0 ? out_flat.rows(at, at + counts[static_cast<size_t>(me)])
                                                       : out_flat.rows(0, 0);
    comm.reduce_scatter_v_sum(flat.rows(b0 - first, b1 - first), counts, part);
  }
}

}  // namespace moe

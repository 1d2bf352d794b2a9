// Data-parallel gradient averaging over a flat gradient buffer, bucketed so that a large
// buffer goes out as a series of fixed-size collectives instead of one huge call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

constexpr size_t k_default_bucket_bytes = size_t{25} << 20;  // 25 MiB, as in PyTorch DDP

// grads[n] (any shape, read as flat) <- mean over comm's ranks of grads[n], in place, as
// all-reduces over consecutive buckets of bucket_bytes (rounded down to whole elements, at
// least one). The buffer is the comm's device and a floating dtype. A single rank is a no-op.
void average_gradients(Communicator& comm, Tensor& grads, size_t bucket_bytes = k_default_bucket_bytes);

// Sharded reduction (ZeRO-2/3), in place: grads[n] holds the flat elements [first, first+n) of
// a buffer whose rank r owns the contiguous range [borders[r], borders[r+1]) (size+1
// non-decreasing borders). Afterwards grads on [first, first+n) ∩ this rank's range holds the
// sum over ranks of their grads there; its other elements are left undefined. Bucket by bucket:
// each bucket is cut at the borders into one part per rank and reduce-scattered with
// reduce_scatter_v_sum, so a rank receives only its part ((N-1)/N of the bucket's bytes, half of
// what an all-reduce sends) and nothing is staged. Collective.
void reduce_scatter_sharded(Communicator& comm, Tensor& grads, int64_t first, const std::vector<int64_t>& borders,
                            size_t bucket_bytes = k_default_bucket_bytes);

}  // namespace moe

// Data-parallel gradient averaging over a flat gradient buffer, bucketed so that a large
// buffer goes out as a series of fixed-size collectives instead of one huge call.
#pragma once

#include <cstddef>

#include "parallel/communicator.h"

namespace moe {

constexpr size_t k_default_bucket_bytes = size_t{25} << 20;  // 25 MiB, as in PyTorch DDP

// grads[n] (any shape, read as flat) <- mean over comm's ranks of grads[n], in place, as
// all-reduces over consecutive buckets of bucket_bytes (rounded down to whole elements, at
// least one). The buffer is the comm's device and a floating dtype. A single rank is a no-op.
void average_gradients(Communicator& comm, Tensor& grads, size_t bucket_bytes = k_default_bucket_bytes);

}  // namespace moe

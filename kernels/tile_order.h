// The order in which the persistent weight-gradient blocks of kernels/cuda/grouped_gemm_sm90.cu
// take their tiles, shared with the CPU tests: a tile's cost follows its expert's rows, so the
// experts go longest first, and the blocks walk the rounds of tiles in a snake.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace moe::kernels {

// Expert e's place when the experts are sorted by decreasing rows (rows_of[E]; ties by index):
// over e = 0..E-1 the ranks are a permutation of 0..E-1.
MOE_HOST_DEVICE inline int32_t rank_by_rows(const int32_t* rows_of, int64_t num_experts, int64_t e) {
  const int32_t mine = rows_of[e];
  int32_t rank = 0;
  for (int64_t o = 0; o < num_experts; ++o) rank += rows_of[o] > mine || (rows_of[o] == mine && o < e);
  return rank;
}

// The tile block b of `blocks` takes in round i: tile b of even rounds, tile blocks - 1 - b of odd
// ones (round i holds tiles i * blocks ... i * blocks + blocks - 1). With the tiles in decreasing
// cost, a block that had a costlier tile in one round gets a cheaper one in the next. Tiles past
// the last are the caller's to skip.
MOE_HOST_DEVICE inline int64_t snake_tile(int i, int b, int blocks) {
  return static_cast<int64_t>(i) * blocks + ((i & 1) ? blocks - 1 - b : b);
}

}  // namespace moe::kernels

// Entry point of the NCCL communicator test: one GPU per rank. Every rank exits 77 (CTest
// "skipped") when this node has fewer GPUs than ranks, so CPU-only machines skip it.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "parallel/mpi_env.h"
#include "src/tensor/tensor.h"

int main(int argc, char** argv) {
  moe::MpiEnv env(&argc, &argv);
  int gpus = moe::cuda_device_count();
  if (gpus < env.local_size()) {
    if (env.world_rank() == 0) std::printf("%d GPUs for %d ranks on this node: skipping\n", gpus, env.local_size());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}

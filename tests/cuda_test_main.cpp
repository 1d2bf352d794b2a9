// Entry point of the CUDA test executables: exits 77 (CTest "skipped") where no GPU is usable,
// so the `cuda` label skips rather than fails on CPU-only machines.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "src/tensor/tensor.h"

int main(int argc, char** argv) {
  if (!moe::cuda_available()) {
    std::printf("no CUDA device: skipping\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}

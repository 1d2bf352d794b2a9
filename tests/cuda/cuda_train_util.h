// Training on the CPU (the f32 reference) and on the GPU (bf16) side by side, step by step, for
// the CUDA training tests.
#pragma once

#include <functional>

#include "parallel/communicator.h"
#include "src/train/trainer.h"

namespace moe::test {

// Ten steps of `c` on the CPU and on the GPU side by side; `check` compares each step's results.
inline void train_side_by_side(const Config& c, const std::function<void(const StepResult&, const StepResult&)>& check) {
  Config gpu = c;
  gpu.train.device = "cuda";
  auto cpu_world = make_world_communicator(Device::cpu());
  auto gpu_world = make_world_communicator(Device::cuda(0));
  Trainer cpu_trainer(c, 0, *cpu_world);
  Trainer gpu_trainer(gpu, 0, *gpu_world);
  REQUIRE(gpu_trainer.device().is_cuda());
  for (int step = 1; step <= 10; ++step) {
    StepResult r_cpu = cpu_trainer.train_step();
    StepResult r_gpu = gpu_trainer.train_step();
    INFO("step " << step << " cpu " << r_cpu.loss << " gpu " << r_gpu.loss);
    check(r_cpu, r_gpu);
  }
}

}  // namespace moe::test

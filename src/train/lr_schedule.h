// Learning-rate schedules: linear warm-up, then cosine, linear, constant, step decay
// (DeepSeekMoE) or warmup-stable-decay, all ending at optim.min_lr where they decay.
#pragma once

#include <cstdint>

#include "src/config/config.h"

namespace moe {

// The learning rate for 0-based step `step` of `total_steps`.
double learning_rate(const ScheduleConfig& schedule, const OptimConfig& optim, int64_t step, int64_t total_steps);

}  // namespace moe

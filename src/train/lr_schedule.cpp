// Learning-rate schedules. Warm-up is linear from lr/warmup to lr over warmup_steps steps;
// "progress" is the fraction of post-warm-up steps done.
#include "src/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "src/util/check.h"

namespace moe {

double learning_rate(const ScheduleConfig& s, const OptimConfig& o, int64_t step, int64_t total_steps) {
  if (step < s.warmup_steps) {
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  }
  double span = static_cast<double>(std::max<int64_t>(total_steps - s.warmup_steps, 1));
  double progress = std::clamp(static_cast<double>(step - s.warmup_steps) / span, 0.0, 1.0);
  if (s.kind == "constant") return o.lr;
  if (s.kind == "cosine") return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
  if (s.kind == "linear") return o.lr + (o.min_lr - o.lr) * progress;
  if (s.kind == "step") {
    // DeepSeekMoE: multiply by step_factor at each given fraction of the whole run.
    double lr = o.lr, done = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(total_steps, 1));
    for (double f : s.step_fractions) lr *= done >= f ? s.step_factor : 1.0;
    return lr;
  }
  if (s.kind == "wsd") {
    // Warmup-stable-decay: constant, then linear to min_lr over the final decay_fraction of steps.
    double decay_start = static_cast<double>(total_steps) * (1.0 - s.decay_fraction);
    if (static_cast<double>(step) < decay_start) return o.lr;
    double t = (static_cast<double>(step) - decay_start) / std::max(static_cast<double>(total_steps) - decay_start, 1.0);
    return o.lr + (o.min_lr - o.lr) * std::clamp(t, 0.0, 1.0);
  }
  MOE_FAIL("unknown schedule.kind '", s.kind, "'");
}

}  // namespace moe

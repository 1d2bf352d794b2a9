// StepGuard: the loss-spike window on the host, the skip record on the device (read only on the
// steps that read their loss, so a GPU step that logs nothing makes no host wait).
#include "src/train/step_guard.h"

#include <cmath>

#include "src/ops/ops.h"
#include "src/util/check.h"

namespace moe {

StepGuard::StepGuard(const TrainConfig& train, Device device)
    : skip_step_(train.nonfinite == "skip_step"),
      max_skipped_(train.max_skipped_steps),
      spike_factor_(train.loss_spike_factor),
      record_(Tensor::zeros({5}, DType::f64, device)) {}

std::string StepGuard::judge(double loss, double grad_norm) const {
  if (!std::isfinite(loss)) return detail::concat("loss is ", loss);
  if (!std::isfinite(grad_norm)) return detail::concat("gradient norm is ", grad_norm);
  if (spike_factor_ > 0 && !recent_.empty()) {
    const double mean = recent_sum_ / static_cast<double>(recent_.size());
    if (loss > spike_factor_ * mean) {
      return detail::concat("loss is ", loss, " (above train.loss_spike_factor = ", spike_factor_, " x the mean ", mean,
                            " of the last ", recent_.size(), " steps)");
    }
  }
  return "";
}

void StepGuard::accept(double loss) {
  recent_.push_back(loss);
  recent_sum_ += loss;
  if (recent_.size() > k_window) {
    recent_sum_ -= recent_.front();
    recent_.pop_front();
  }
}

void StepGuard::record(const Tensor& clip_scale, int64_t step) { ops::record_skipped_step(clip_scale, record_, step); }

SkipRecord StepGuard::read() const {
  const std::vector<double> v = record_.to_vector<double>();
  return {static_cast<int64_t>(v[0]), static_cast<int64_t>(v[1]), static_cast<int64_t>(v[2]),
          static_cast<int64_t>(v[3]), static_cast<int64_t>(v[4])};
}

SkipRecord StepGuard::check(int64_t step, int rank) const {
  const SkipRecord r = read();
  MOE_CHECK(skip_step_ || r.skipped == 0, "gradient norm is not finite at step ", r.first, " (rank ", rank,
            "): training diverged; lower optim.lr or check the data (train.nonfinite = \"stop\"; found at step ",
            step, ", the update of step ", r.first, " was not applied)");
  MOE_CHECK(r.longest < max_skipped_, r.longest, " consecutive steps skipped (the last at step ", r.last,
            ", train.max_skipped_steps = ", max_skipped_, ") (rank ", rank,
            "): training diverged; lower optim.lr or check the data");
  return r;
}

}  // namespace moe

// The NaN/Inf policy of a run (train.nonfinite, train.max_skipped_steps, train.loss_spike_factor):
// judges the loss and gradient norm a step reads, and keeps the record of skipped updates.
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "src/config/config.h"
#include "src/tensor/tensor.h"

namespace moe {

// What the device-side skip record says (ops::record_skipped_step); steps are 1-based, 0 = none.
struct SkipRecord {
  int64_t skipped = 0;      // steps whose update was skipped, in all
  int64_t consecutive = 0;  // the current run of consecutive skipped steps
  int64_t longest = 0;      // the longest such run
  int64_t first = 0, last = 0;
};

class StepGuard {
 public:
  // Losses the spike guard averages over: the last k_window that passed.
  static constexpr size_t k_window = 20;

  StepGuard(const TrainConfig& train, Device device);

  bool skips() const { return skip_step_; }
  // Why a step's loss and gradient norm (read from the device) must not update the weights:
  // "loss is nan", "gradient norm is inf", "loss is 1.2e+13 (above train.loss_spike_factor = 100
  // x the mean 5.31 of the last 20 steps)"; "" when fine.
  std::string judge(double loss, double grad_norm) const;
  // A loss that passed judge joins the running mean.
  void accept(double loss);
  // After the optimizer step: the step counts as skipped when the clip scale is NaN (the fused
  // AdamW left the weights alone). On the device, no host wait.
  void record(const Tensor& clip_scale, int64_t step);
  // Reads the record (a host wait on the GPU).
  SkipRecord read() const;
  // Every rank calls it on the steps that read their loss and before a checkpoint: under "stop"
  // a skipped step is an error naming it (the GPU skips non-finite gradient norms on steps that
  // read nothing), under "skip_step" max_skipped_steps consecutive skips are. Returns the
  // record.
  SkipRecord check(int64_t step, int rank) const;

 private:
  bool skip_step_ = false;
  int64_t max_skipped_ = 10;
  double spike_factor_ = 0;
  std::deque<double> recent_;
  double recent_sum_ = 0;
  Tensor record_;  // f64[5] on the device
};

}  // namespace moe

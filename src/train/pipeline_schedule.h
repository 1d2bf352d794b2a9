// Pipeline schedules: the order in which one stage runs the forwards and backwards of a step's
// micro-batches (1F1B or GPipe), and the runner that moves activations and their gradients
// between neighbouring stages.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

enum class PipeOp { forward, backward };
struct PipeAction {
  PipeOp op = PipeOp::forward;
  int micro = 0;
  bool operator==(const PipeAction&) const = default;
};

// "1f1b" (Megatron's non-interleaved schedule): stage s runs min(stages - s - 1, m) warm-up
// forwards, then alternates one forward and one backward, then drains the backwards; at most
// stages - s micro-batches hold activations at once. "gpipe": all forwards, then all backwards
// (every micro-batch's activations held). With one stage 1F1B is forward, backward per
// micro-batch. Throws naming an unknown schedule.
std::vector<PipeAction> pipeline_actions(const std::string& schedule, int stages, int stage, int micro_batches);

// The idle fraction of an ideal pipeline with equal stages: (p - 1) / (m + p - 1), the same
// for both schedules.
double ideal_bubble_fraction(int stages, int micro_batches);
// The measured bubble of a step: 1 - mean(stage_busy) / wall, the fraction of stage-time spent
// waiting (0 when wall is 0; clamped at 0 against timer noise).
double bubble_fraction(const std::vector<double>& stage_busy, double wall);

// One stage's side of a step. forward(micro, input) returns the stage's output activations
// (undefined on the last stage); backward(micro, d_output) returns the gradient of the stage's
// input (undefined on the first stage). The runner receives each input from the previous stage
// and each d_output from the next and sends outputs and input gradients on. With `paired`
// (1F1B), a send followed by a receive from the same neighbour is one send_recv: in 1F1B's
// steady state both neighbours send at once (a forward output one way, a gradient the other),
// and each stage's forward-then-backward meets its neighbour's backward-then-forward. GPipe has
// no such meeting, and pairing its one transition against the neighbour's plain send and recv
// deadlocks NCCL: it runs every transfer on its own.
struct StageCallbacks {
  std::function<Tensor(int micro, const Tensor& input)> forward;
  std::function<Tensor(int micro, const Tensor& d_output)> backward;
};
// pp: the pipeline group (rank = stage), nullptr for one stage. Activations are
// activation_shape in dtype on device.
void run_pipeline(const std::vector<PipeAction>& actions, Communicator* pp, const Shape& activation_shape,
                  DType dtype, Device device, const StageCallbacks& stage, bool paired);

}  // namespace moe

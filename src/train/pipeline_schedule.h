// Pipeline schedules: the order in which one stage runs the forwards and backwards of a step's
// micro-batches (1F1B, GPipe or interleaved 1F1B over virtual stages), and the runners that move
// activations and their gradients between the stages.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

enum class PipeOp { forward, backward };
// One compute call of a stage: the forward or backward of micro-batch `micro` through the
// stage's model chunk `chunk` (0 unless the schedule is interleaved).
struct PipeAction {
  PipeOp op = PipeOp::forward;
  int micro = 0;
  int chunk = 0;
  bool operator==(const PipeAction&) const = default;
};

// "1f1b" (Megatron's non-interleaved schedule): stage s runs min(stages - s - 1, m) warm-up
// forwards, then alternates one forward and one backward, then drains the backwards; at most
// stages - s micro-batches hold activations at once. "gpipe": all forwards, then all backwards
// (every micro-batch's activations held). With one stage 1F1B is forward, backward per
// micro-batch. Throws naming an unknown schedule.
// virtual_stages v > 1: Megatron's interleaved 1F1B. Each stage holds v model chunks; chunk c of
// stage s is virtual stage c * stages + s of stages * v (layers assigned in that order). The
// k-th forward of a stage runs micro-batch (k / (p v)) p + k % p through chunk (k % (p v)) / p,
// the k-th backward the same micro-batch through chunk v - 1 - that; 2 (p - s - 1) + (v - 1) p
// warm-up forwards (at most v m), then one forward and one backward alternate. At most
// min(v m, 2 (p - s - 1) + (v - 1) p + 1) chunk activations are held at once. Needs "1f1b" and
// m a multiple of p (a clear error otherwise).
std::vector<PipeAction> pipeline_actions(const std::string& schedule, int stages, int stage, int micro_batches,
                                         int virtual_stages = 1);

// The idle fraction of an ideal pipeline with equal stages: (p - 1) / (m + p - 1), the same
// for 1F1B and GPipe. Interleaved over v virtual stages the bubble is (p - 1) / (v m) of the
// ideal compute time (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on
// GPU Clusters Using Megatron-LM", section 2.2.2), so (p - 1) / (v m + p - 1) of the wall.
double ideal_bubble_fraction(int stages, int micro_batches, int virtual_stages = 1);
// The measured bubble of a step: 1 - mean(stage_busy) / wall, the fraction of stage-time spent
// waiting (0 when wall is 0; clamped at 0 against timer noise).
double bubble_fraction(const std::vector<double>& stage_busy, double wall);

// One stage's side of a step. forward(micro, chunk, input) returns the chunk's output activations
// (undefined after the model's last layer); backward(micro, chunk, d_output) returns the gradient
// of the chunk's input (undefined before the model's first layer).
struct StageCallbacks {
  std::function<Tensor(int micro, int chunk, const Tensor& input)> forward;
  std::function<Tensor(int micro, int chunk, const Tensor& d_output)> backward;
};

// The runner of the non-interleaved schedules. It receives each input from the previous stage
// and each d_output from the next and sends outputs and input gradients on. With `paired`
// (1F1B), a send followed by a receive from the same neighbour is one send_recv: in 1F1B's
// steady state both neighbours send at once (a forward output one way, a gradient the other),
// and each stage's forward-then-backward meets its neighbour's backward-then-forward. GPipe has
// no such meeting, and pairing its one transition against the neighbour's plain send and recv
// deadlocks NCCL: it runs every transfer on its own.
// pp: the pipeline group (rank = stage), nullptr for one stage. Activations are
// activation_shape in dtype on device.
void run_pipeline(const std::vector<PipeAction>& actions, Communicator* pp, const Shape& activation_shape,
                  DType dtype, Device device, const StageCallbacks& stage, bool paired);

// The interleaved schedule in lockstep rounds: in round j every stage runs at most one action (the
// next of its list, as soon as its input arrived in an earlier round), then sends what it produced
// to the stage of the neighbouring virtual stage and receives what its neighbours produced in
// round j, all in one batch_send_recv. Every stage has the same rounds, and round j's transfers
// only wait on round j of the neighbours, so no order of the stages can deadlock.
struct PipeTransfer {
  PipeOp op = PipeOp::forward;  // of the action that consumes the tensor
  int micro = 0, chunk = 0;     // the consuming action's micro-batch and chunk (on the receiver)
  int peer = 0;                 // the stage sending (recvs) or receiving (sends) it
};
struct PipeRound {
  int action = -1;  // index into the stage's actions; -1 = idle this round
  std::vector<PipeTransfer> sends, recvs;
};
// Rounds of `stage`, from every stage's pipeline_actions; throws when the schedule deadlocks.
std::vector<PipeRound> pipeline_rounds(const std::string& schedule, int stages, int stage, int micro_batches,
                                       int virtual_stages);
void run_pipeline_rounds(const std::string& schedule, int micro_batches, int virtual_stages, Communicator* pp,
                         const Shape& activation_shape, DType dtype, Device device, const StageCallbacks& stage);

}  // namespace moe

// Pipeline schedules and the stage runner (send/recv between neighbouring stages).
#include "src/train/pipeline_schedule.h"

#include <algorithm>
#include <map>

#include "src/util/check.h"

namespace moe {

std::vector<PipeAction> pipeline_actions(const std::string& schedule, int stages, int stage, int micro_batches) {
  MOE_CHECK(stages >= 1 && stage >= 0 && stage < stages && micro_batches >= 1, "pipeline: stage ", stage, " of ",
            stages, " with ", micro_batches, " micro-batches");
  std::vector<PipeAction> out;
  if (schedule == "gpipe") {
    for (int i = 0; i < micro_batches; ++i) out.push_back({PipeOp::forward, i});
    for (int i = 0; i < micro_batches; ++i) out.push_back({PipeOp::backward, i});
    return out;
  }
  MOE_CHECK(schedule == "1f1b", "parallel.pp_schedule = \"", schedule, "\" is not a schedule (1f1b or gpipe)");
  const int warmup = std::min(stages - stage - 1, micro_batches);
  for (int i = 0; i < warmup; ++i) out.push_back({PipeOp::forward, i});
  for (int i = 0; i < micro_batches - warmup; ++i) {
    out.push_back({PipeOp::forward, warmup + i});
    out.push_back({PipeOp::backward, i});
  }
  for (int i = micro_batches - warmup; i < micro_batches; ++i) out.push_back({PipeOp::backward, i});
  return out;
}

double ideal_bubble_fraction(int stages, int micro_batches) {
  return static_cast<double>(stages - 1) / static_cast<double>(micro_batches + stages - 1);
}

double bubble_fraction(const std::vector<double>& stage_busy, double wall) {
  double mean_busy = 0;
  for (double b : stage_busy) mean_busy += b / static_cast<double>(stage_busy.size());
  return wall > 0 ? std::max(0.0, 1.0 - mean_busy / wall) : 0.0;
}

void run_pipeline(const std::vector<PipeAction>& actions, Communicator* pp, const Shape& activation_shape, DType dtype,
                  Device device, const StageCallbacks& stage, bool paired) {
  const int stages = pp != nullptr ? pp->size() : 1, me = pp != nullptr ? pp->rank() : 0;
  const bool first = me == 0, last = me == stages - 1;
  std::map<int, Tensor> inputs, d_outputs;  // received ahead of their action, by micro-batch
  auto fresh = [&] { return Tensor::empty(activation_shape, dtype, device); };
  // The tensor of micro-batch `micro` from `peer`: received ahead by a send_recv, or now.
  auto take = [&](std::map<int, Tensor>& ahead, int micro, int peer) {
    auto it = ahead.find(micro);
    if (it == ahead.end()) {
      Tensor t = fresh();
      pp->recv(t, peer);
      return t;
    }
    Tensor t = it->second;
    ahead.erase(it);
    return t;
  };
  // Sends x to peer; when the next action waits on that peer (paired schedules), receives its
  // tensor in the same step into `ahead`.
  auto pass = [&](const Tensor& x, int peer, const PipeAction* next, PipeOp waits_on_peer,
                  std::map<int, Tensor>& ahead) {
    if (paired && next != nullptr && next->op == waits_on_peer) {
      Tensor answer = fresh();
      pp->send_recv(x, peer, answer, peer);
      ahead[next->micro] = answer;
    } else {
      pp->send(x, peer);
    }
  };
  for (size_t a = 0; a < actions.size(); ++a) {
    const PipeAction& act = actions[a];
    const PipeAction* next = a + 1 < actions.size() ? &actions[a + 1] : nullptr;
    if (act.op == PipeOp::forward) {
      Tensor output = stage.forward(act.micro, first ? Tensor() : take(inputs, act.micro, me - 1));
      if (!last) pass(output, me + 1, next, PipeOp::backward, d_outputs);  // the next stage's gradient
    } else {
      Tensor d_input = stage.backward(act.micro, last ? Tensor() : take(d_outputs, act.micro, me + 1));
      if (!first) pass(d_input, me - 1, next, PipeOp::forward, inputs);  // the previous stage's next input
    }
  }
}

}  // namespace moe

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

void run_pipeline(const std::vector<PipeAction>& actions, Communicator* pp, const Shape& activation_shape, DType dtype,
                  Device device, const StageCallbacks& stage, bool paired) {
  const int stages = pp != nullptr ? pp->size() : 1, me = pp != nullptr ? pp->rank() : 0;
  const bool first = me == 0, last = me == stages - 1;
  std::map<int, Tensor> inputs, d_outputs;  // received ahead of their action, by micro-batch
  auto fresh = [&] { return Tensor::empty(activation_shape, dtype, device); };
  for (size_t a = 0; a < actions.size(); ++a) {
    const PipeAction& act = actions[a];
    const PipeAction* next = a + 1 < actions.size() ? &actions[a + 1] : nullptr;
    if (act.op == PipeOp::forward) {
      Tensor input;
      if (!first) {
        auto it = inputs.find(act.micro);
        if (it == inputs.end()) {
          input = fresh();
          pp->recv(input, me - 1);
        } else {
          input = it->second;
          inputs.erase(it);
        }
      }
      Tensor output = stage.forward(act.micro, input);
      if (last) continue;
      if (paired && next != nullptr && next->op == PipeOp::backward) {
        Tensor d_out = fresh();  // the next stage answers with this gradient
        pp->send_recv(output, me + 1, d_out, me + 1);
        d_outputs[next->micro] = d_out;
      } else {
        pp->send(output, me + 1);
      }
    } else {
      Tensor d_output;
      if (!last) {
        auto it = d_outputs.find(act.micro);
        if (it == d_outputs.end()) {
          d_output = fresh();
          pp->recv(d_output, me + 1);
        } else {
          d_output = it->second;
          d_outputs.erase(it);
        }
      }
      Tensor d_input = stage.backward(act.micro, d_output);
      if (first) continue;
      if (paired && next != nullptr && next->op == PipeOp::forward) {
        Tensor input = fresh();  // the previous stage answers with the next micro-batch
        pp->send_recv(d_input, me - 1, input, me - 1);
        inputs[next->micro] = input;
      } else {
        pp->send(d_input, me - 1);
      }
    }
  }
}

}  // namespace moe

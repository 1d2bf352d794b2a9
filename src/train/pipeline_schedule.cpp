// Pipeline schedules (1F1B, GPipe, interleaved 1F1B), their lockstep rounds, and the stage
// runners (send/recv between the stages).
#include "src/train/pipeline_schedule.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "src/util/check.h"

namespace moe {

namespace {

// Megatron's interleaved 1F1B (schedules.py, forward_backward_pipelining_with_interleaving).
std::vector<PipeAction> interleaved_actions(int stages, int stage, int micro_batches, int virtual_stages) {
  const int p = stages, v = virtual_stages, total = micro_batches * v;
  auto action = [&](int k, PipeOp op) {
    const int in_group = k % (p * v);
    const int chunk = in_group / p;
    return PipeAction{op, k / (p * v) * p + k % p, op == PipeOp::forward ? chunk : v - 1 - chunk};
  };
  const int warmup = std::min(total, 2 * (p - stage - 1) + (v - 1) * p);
  std::vector<PipeAction> out;
  for (int k = 0; k < warmup; ++k) out.push_back(action(k, PipeOp::forward));
  for (int k = 0; k < total - warmup; ++k) {
    out.push_back(action(warmup + k, PipeOp::forward));
    out.push_back(action(k, PipeOp::backward));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(action(k, PipeOp::backward));
  return out;
}

}  // namespace

std::vector<PipeAction> pipeline_actions(const std::string& schedule, int stages, int stage, int micro_batches,
                                         int virtual_stages) {
  MOE_CHECK(stages >= 1 && stage >= 0 && stage < stages && micro_batches >= 1 && virtual_stages >= 1,
            "pipeline: stage ", stage, " of ", stages, " with ", micro_batches, " micro-batches and ", virtual_stages,
            " virtual stages");
  MOE_CHECK(schedule == "1f1b" || schedule == "gpipe", "parallel.pp_schedule = \"", schedule,
            "\" is not a schedule (1f1b or gpipe)");
  if (virtual_stages > 1) {
    MOE_CHECK(schedule == "1f1b", "parallel.pp_virtual = ", virtual_stages,
              " (interleaved 1F1B) needs parallel.pp_schedule = \"1f1b\", not \"", schedule, "\"");
    MOE_CHECK(micro_batches % stages == 0, "parallel.pp_virtual = ", virtual_stages, " needs train.grad_accum (",
              micro_batches, ") to be a multiple of parallel.pp (", stages, ")");
    return interleaved_actions(stages, stage, micro_batches, virtual_stages);
  }
  std::vector<PipeAction> out;
  if (schedule == "gpipe") {
    for (int i = 0; i < micro_batches; ++i) out.push_back({PipeOp::forward, i});
    for (int i = 0; i < micro_batches; ++i) out.push_back({PipeOp::backward, i});
    return out;
  }
  const int warmup = std::min(stages - stage - 1, micro_batches);
  for (int i = 0; i < warmup; ++i) out.push_back({PipeOp::forward, i});
  for (int i = 0; i < micro_batches - warmup; ++i) {
    out.push_back({PipeOp::forward, warmup + i});
    out.push_back({PipeOp::backward, i});
  }
  for (int i = micro_batches - warmup; i < micro_batches; ++i) out.push_back({PipeOp::backward, i});
  return out;
}

double ideal_bubble_fraction(int stages, int micro_batches, int virtual_stages) {
  return static_cast<double>(stages - 1) / static_cast<double>(virtual_stages * micro_batches + stages - 1);
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
      Tensor output = stage.forward(act.micro, 0, first ? Tensor() : take(inputs, act.micro, me - 1));
      if (!last) pass(output, me + 1, next, PipeOp::backward, d_outputs);  // the next stage's gradient
    } else {
      Tensor d_input = stage.backward(act.micro, 0, last ? Tensor() : take(d_outputs, act.micro, me + 1));
      if (!first) pass(d_input, me - 1, next, PipeOp::forward, inputs);  // the previous stage's next input
    }
  }
}

std::vector<PipeRound> pipeline_rounds(const std::string& schedule, int stages, int stage, int micro_batches,
                                       int virtual_stages) {
  const int p = stages, num_virtual = stages * virtual_stages;
  std::vector<std::vector<PipeAction>> actions;
  for (int s = 0; s < p; ++s) actions.push_back(pipeline_actions(schedule, p, s, micro_batches, virtual_stages));
  // done[(op, micro, virtual stage)] = the round that ran it.
  std::map<std::tuple<PipeOp, int, int>, int> done;
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  std::vector<PipeRound> rounds;
  for (int round = 0;; ++round) {
    bool finished = true, progress = false;
    PipeRound mine;
    for (int s = 0; s < p; ++s) {
      if (next[s] == actions[s].size()) continue;
      finished = false;
      const PipeAction a = actions[s][next[s]];
      const int vs = a.chunk * p + s;
      const bool fwd = a.op == PipeOp::forward;
      const int from = fwd ? vs - 1 : vs + 1;  // the virtual stage that feeds this action
      if (from >= 0 && from < num_virtual) {
        auto it = done.find({a.op, a.micro, from});
        if (it == done.end() || it->second >= round) continue;
      }
      done[{a.op, a.micro, vs}] = round;
      progress = true;
      if (s == stage) mine.action = static_cast<int>(next[s]);
      ++next[s];
      // The consumer of this action's result, and the transfer when it sits on another stage.
      const int to = fwd ? vs + 1 : vs - 1;
      if (to < 0 || to >= num_virtual || to % p == s) continue;
      const PipeTransfer transfer{a.op, a.micro, to / p, 0};
      if (s == stage) mine.sends.push_back({transfer.op, transfer.micro, transfer.chunk, to % p});
      if (to % p == stage) mine.recvs.push_back({transfer.op, transfer.micro, transfer.chunk, s});
    }
    if (finished) break;
    MOE_CHECK(progress, "pipeline: the ", schedule, " schedule of ", p, " stages, ", micro_batches,
              " micro-batches and ", virtual_stages, " virtual stages deadlocks at round ", round);
    rounds.push_back(mine);
  }
  return rounds;
}

void run_pipeline_rounds(const std::string& schedule, int micro_batches, int virtual_stages, Communicator* pp,
                         const Shape& activation_shape, DType dtype, Device device, const StageCallbacks& stage) {
  const int stages = pp != nullptr ? pp->size() : 1, me = pp != nullptr ? pp->rank() : 0;
  const int num_virtual = stages * virtual_stages;
  const std::vector<PipeAction> actions = pipeline_actions(schedule, stages, me, micro_batches, virtual_stages);
  // Inputs and output gradients that arrived ahead of their action, by (op, micro, chunk).
  std::map<std::tuple<PipeOp, int, int>, Tensor> ready;
  for (const PipeRound& round : pipeline_rounds(schedule, stages, me, micro_batches, virtual_stages)) {
    Tensor result;
    if (round.action >= 0) {
      const PipeAction& a = actions[static_cast<size_t>(round.action)];
      const int vs = a.chunk * stages + me;
      const bool fwd = a.op == PipeOp::forward;
      const bool fed = fwd ? vs > 0 : vs < num_virtual - 1;
      Tensor in;
      if (fed) {
        auto it = ready.find({a.op, a.micro, a.chunk});
        MOE_CHECK(it != ready.end(), "pipeline: the input of micro-batch ", a.micro, " chunk ", a.chunk, " is missing");
        in = it->second;
        ready.erase(it);
      }
      result = fwd ? stage.forward(a.micro, a.chunk, in) : stage.backward(a.micro, a.chunk, in);
      // The next virtual stage on this same stage (one stage only) takes the result directly.
      const int to = fwd ? vs + 1 : vs - 1;
      if (to >= 0 && to < num_virtual && to % stages == me) ready[{a.op, a.micro, to / stages}] = result;
    }
    std::vector<P2pOp> ops;
    for (const PipeTransfer& t : round.recvs) {
      Tensor in = Tensor::empty(activation_shape, dtype, device);
      ready[{t.op, t.micro, t.chunk}] = in;
      ops.push_back({in, t.peer, false});
    }
    for (const PipeTransfer& t : round.sends) ops.push_back({result, t.peer, true});
    if (!ops.empty()) pp->batch_send_recv(ops);
  }
}

}  // namespace moe

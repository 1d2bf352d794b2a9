// The pipeline schedules, asserted exactly: each stage's actions (pipeline_actions) in order for
// 1F1B, GPipe and interleaved 1F1B, the bound on micro-batches holding activations, and the
// bubble of each played on a simulated clock where a forward waits for the previous virtual
// stage's forward of the same micro-batch and a backward for the next one's backward: with equal
// stages every stage idles exactly (p - 1) (t_f + t_b) (per chunk costs when interleaved), so the
// bubble (bubble_fraction, the formula the trainer reports) is the ideal of ideal_bubble_fraction.
// The lockstep rounds of pipeline_rounds run each stage's actions in order and pair every send
// with a receive in the same round.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "src/train/pipeline_schedule.h"

namespace moe {
namespace {

using Ops = std::vector<PipeAction>;
constexpr PipeOp F = PipeOp::forward, B = PipeOp::backward;

struct Timeline {
  std::vector<double> busy, idle;  // per stage (idle: waiting before the stage's last action ends)
  double wall = 0;
};

// Plays every stage's schedule; a (chunk) forward costs t_fwd and a backward t_bwd on every
// stage. Fails the test (deadlock) when no stage can make progress.
Timeline simulate(const std::string& schedule, int stages, int micro_batches, double t_fwd, double t_bwd,
                  int virtual_stages = 1) {
  std::vector<Ops> actions;
  for (int s = 0; s < stages; ++s) {
    actions.push_back(pipeline_actions(schedule, stages, s, micro_batches, virtual_stages));
  }
  const int num_virtual = stages * virtual_stages;
  std::vector<size_t> next(static_cast<size_t>(stages), 0);
  std::vector<double> clock(static_cast<size_t>(stages), 0.0);
  std::map<std::pair<int, int>, double> fwd_done, bwd_done;  // (virtual stage, micro) -> finish time
  Timeline t;
  t.busy.assign(static_cast<size_t>(stages), 0.0);
  t.idle.assign(static_cast<size_t>(stages), 0.0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < stages; ++s) {
      if (next[s] == actions[s].size()) continue;
      const PipeAction a = actions[s][next[s]];
      const bool fwd = a.op == F;
      const int vs = a.chunk * stages + s;
      double ready = clock[s];
      if (fwd && vs > 0) {
        auto it = fwd_done.find({vs - 1, a.micro});
        if (it == fwd_done.end()) continue;
        ready = std::max(ready, it->second);
      }
      if (!fwd && vs < num_virtual - 1) {
        auto it = bwd_done.find({vs + 1, a.micro});
        if (it == bwd_done.end()) continue;
        ready = std::max(ready, it->second);
      }
      if (!fwd) REQUIRE(fwd_done.count({vs, a.micro}) == 1);  // its own forward ran first
      const double cost = fwd ? t_fwd : t_bwd;
      t.idle[s] += ready - clock[s];
      clock[s] = ready + cost;
      t.busy[s] += cost;
      (fwd ? fwd_done : bwd_done)[{vs, a.micro}] = clock[s];
      ++next[s];
      progress = true;
    }
  }
  for (int s = 0; s < stages; ++s) REQUIRE(next[s] == actions[s].size());  // no deadlock
  t.wall = *std::max_element(clock.begin(), clock.end());
  for (int s = 0; s < stages; ++s) t.idle[s] += t.wall - clock[s];  // waiting after its last action
  return t;
}

// The most (micro-batch, chunk) activations a stage holds at once: forwards run, backwards not yet.
int max_in_flight(const Ops& ops) {
  int held = 0, most = 0;
  for (const PipeAction& a : ops) {
    held += a.op == F ? 1 : -1;
    most = std::max(most, held);
  }
  return most;
}

// Every (micro, chunk) has one forward and, later, one backward.
void require_complete(const Ops& ops, int micro_batches, int virtual_stages) {
  std::set<std::pair<int, int>> fwd, bwd;
  for (const PipeAction& a : ops) {
    if (a.op == F) REQUIRE(fwd.insert({a.micro, a.chunk}).second);
    else REQUIRE((fwd.count({a.micro, a.chunk}) == 1 && bwd.insert({a.micro, a.chunk}).second));
  }
  REQUIRE(fwd.size() == static_cast<size_t>(micro_batches * virtual_stages));
  REQUIRE(bwd.size() == fwd.size());
}

TEST_CASE("1F1B and GPipe run their own orders of operations", "[train][pipeline]") {
  // 4 stages, 6 micro-batches: GPipe runs every forward first on every stage.
  for (int s = 0; s < 4; ++s) {
    CHECK(pipeline_actions("gpipe", 4, s, 6) ==
          Ops{{F, 0}, {F, 1}, {F, 2}, {F, 3}, {F, 4}, {F, 5}, {B, 0}, {B, 1}, {B, 2}, {B, 3}, {B, 4}, {B, 5}});
  }
  // 1F1B: p - s - 1 warm-up forwards, then one forward and one backward, then the drain.
  CHECK(pipeline_actions("1f1b", 4, 0, 6) ==
        Ops{{F, 0}, {F, 1}, {F, 2}, {F, 3}, {B, 0}, {F, 4}, {B, 1}, {F, 5}, {B, 2}, {B, 3}, {B, 4}, {B, 5}});
  CHECK(pipeline_actions("1f1b", 4, 2, 6) ==
        Ops{{F, 0}, {F, 1}, {B, 0}, {F, 2}, {B, 1}, {F, 3}, {B, 2}, {F, 4}, {B, 3}, {F, 5}, {B, 4}, {B, 5}});
  CHECK(pipeline_actions("1f1b", 4, 3, 6) ==
        Ops{{F, 0}, {B, 0}, {F, 1}, {B, 1}, {F, 2}, {B, 2}, {F, 3}, {B, 3}, {F, 4}, {B, 4}, {F, 5}, {B, 5}});
  // Fewer micro-batches than the warm-up: all forwards, then all backwards.
  CHECK(pipeline_actions("1f1b", 4, 0, 2) == Ops{{F, 0}, {F, 1}, {B, 0}, {B, 1}});
  CHECK_THROWS_WITH(pipeline_actions("zigzag", 2, 0, 2),
                    Catch::Contains("parallel.pp_schedule = \"zigzag\" is not a schedule (1f1b or gpipe)"));
}

TEST_CASE("1F1B holds at most p - stage micro-batches, GPipe all m", "[train][pipeline]") {
  for (int stages : {1, 2, 3, 4, 8}) {
    for (int micro : {1, 2, 3, 4, 8, 16}) {
      for (int s = 0; s < stages; ++s) {
        INFO("p=" << stages << " m=" << micro << " stage " << s);
        const Ops one = pipeline_actions("1f1b", stages, s, micro), all = pipeline_actions("gpipe", stages, s, micro);
        require_complete(one, micro, 1);
        require_complete(all, micro, 1);
        CHECK(max_in_flight(one) == std::min(stages - s, micro));
        CHECK(max_in_flight(all) == micro);
      }
    }
  }
}

TEST_CASE("1F1B and GPipe idle (p - 1)(t_f + t_b) per stage: the ideal bubble (p - 1) / (m + p - 1)",
          "[train][pipeline]") {
  for (const std::string schedule : {"1f1b", "gpipe"}) {
    for (int stages : {1, 2, 3, 4, 8}) {
      for (int micro : {1, 2, 3, 4, 8, 16}) {
        INFO(schedule << " p=" << stages << " m=" << micro);
        Timeline t = simulate(schedule, stages, micro, 1.0, 2.0);
        // In unit time (t_f + t_b = 3) every stage waits exactly p - 1 forward-backward pairs.
        for (int s = 0; s < stages; ++s) CHECK(t.idle[s] == Approx(3.0 * (stages - 1)).margin(1e-12));
        const double expected = static_cast<double>(stages - 1) / (micro + stages - 1);
        CHECK(ideal_bubble_fraction(stages, micro) == Approx(expected).margin(1e-12));
        CHECK(bubble_fraction(t.busy, t.wall) == Approx(expected).margin(1e-12));
        CHECK(t.wall == Approx(3.0 * (micro + stages - 1)));
      }
    }
  }
  // Known values: 4 stages, 8 micro-batches idle 3/11 of the time; 2 stages and 1 micro-batch half.
  Timeline four = simulate("1f1b", 4, 8, 1, 2), two = simulate("gpipe", 2, 1, 1, 2);
  CHECK(bubble_fraction(four.busy, four.wall) == Approx(3.0 / 11.0));
  CHECK(bubble_fraction(two.busy, two.wall) == Approx(0.5));
}

TEST_CASE("interleaved 1F1B: Megatron's order of chunks and micro-batches", "[train][pipeline]") {
  // p = 2, v = 2, m = 4: micro-batches go in groups of p through chunk 0, then chunk 1.
  CHECK(pipeline_actions("1f1b", 2, 0, 4, 2) == Ops{{F, 0, 0}, {F, 1, 0}, {F, 0, 1}, {F, 1, 1},  // warm-up 2 + 2
                                                    {F, 2, 0}, {B, 0, 1}, {F, 3, 0}, {B, 1, 1},
                                                    {F, 2, 1}, {B, 0, 0}, {F, 3, 1}, {B, 1, 0},
                                                    {B, 2, 1}, {B, 3, 1}, {B, 2, 0}, {B, 3, 0}});
  CHECK(pipeline_actions("1f1b", 2, 1, 4, 2) == Ops{{F, 0, 0}, {F, 1, 0},  // warm-up (v - 1) p
                                                    {F, 0, 1}, {B, 0, 1}, {F, 1, 1}, {B, 1, 1},
                                                    {F, 2, 0}, {B, 0, 0}, {F, 3, 0}, {B, 1, 0},
                                                    {F, 2, 1}, {B, 2, 1}, {F, 3, 1}, {B, 3, 1},
                                                    {B, 2, 0}, {B, 3, 0}});
  CHECK_THROWS_WITH(pipeline_actions("1f1b", 4, 0, 6, 2),
                    Catch::Contains("parallel.pp_virtual = 2 needs train.grad_accum (6) to be a multiple of "
                                    "parallel.pp (4)"));
  CHECK_THROWS_WITH(pipeline_actions("gpipe", 2, 0, 4, 2),
                    Catch::Contains("parallel.pp_virtual = 2 (interleaved 1F1B) needs parallel.pp_schedule = \"1f1b\", "
                                    "not \"gpipe\""));
}

TEST_CASE("interleaved 1F1B holds at most 2 (p - s - 1) + (v - 1) p + 1 chunk activations", "[train][pipeline]") {
  for (int stages : {1, 2, 4, 8}) {
    for (int v : {2, 3, 4}) {
      for (int groups : {1, 2, 4}) {
        const int micro = groups * stages;
        for (int s = 0; s < stages; ++s) {
          INFO("p=" << stages << " v=" << v << " m=" << micro << " stage " << s);
          const Ops ops = pipeline_actions("1f1b", stages, s, micro, v);
          require_complete(ops, micro, v);
          CHECK(max_in_flight(ops) == std::min(v * micro, 2 * (stages - s - 1) + (v - 1) * stages + 1));
        }
      }
    }
  }
}

TEST_CASE("interleaved 1F1B: the bubble is (p - 1) / (v m) of the ideal time", "[train][pipeline]") {
  for (int stages : {2, 4, 8}) {
    for (int v : {2, 4}) {
      for (int groups : {1, 2, 4}) {
        const int micro = groups * stages;
        INFO("p=" << stages << " v=" << v << " m=" << micro);
        // Equal chunk costs (a chunk is 1/v of a stage: forward and backward 1 unit each).
        Timeline t = simulate("1f1b", stages, micro, 1.0, 1.0, v);
        const double ideal = 2.0 * v * micro;  // one stage's compute
        for (int s = 0; s < stages; ++s) CHECK(t.idle[s] == Approx(2.0 * (stages - 1)).margin(1e-12));
        CHECK((t.wall - ideal) / ideal == Approx(static_cast<double>(stages - 1) / (v * micro)).margin(1e-12));
        CHECK(bubble_fraction(t.busy, t.wall) == Approx(ideal_bubble_fraction(stages, micro, v)).margin(1e-12));
        // v times smaller than the non-interleaved bubble's (p - 1) / m of the ideal time.
        Timeline plain = simulate("1f1b", stages, micro, v, v);
        CHECK((plain.wall - ideal) / ideal == Approx(v * (t.wall - ideal) / ideal).margin(1e-12));
      }
    }
  }
}

TEST_CASE("pipeline rounds: each stage's actions in order, every send received in its round", "[train][pipeline]") {
  for (int stages : {1, 2, 3, 4}) {
    for (int v : {1, 2, 3}) {
      const int micro = 2 * stages;
      INFO("p=" << stages << " v=" << v << " m=" << micro);
      std::vector<std::vector<PipeRound>> rounds;
      for (int s = 0; s < stages; ++s) rounds.push_back(pipeline_rounds("1f1b", stages, s, micro, v));
      for (int s = 0; s < stages; ++s) {
        REQUIRE(rounds[s].size() == rounds[0].size());  // lockstep: the same number of rounds
        int expected = 0;
        for (const PipeRound& r : rounds[s]) {
          if (r.action >= 0) REQUIRE(r.action == expected++);
        }
        REQUIRE(expected == static_cast<int>(pipeline_actions("1f1b", stages, s, micro, v).size()));
      }
      // A send of stage s to stage t in round j is a receive of t from s in round j.
      using Key = std::tuple<size_t, int, int, PipeOp, int, int>;  // round, from, to, op, micro, chunk
      std::set<Key> sent, received;
      for (int s = 0; s < stages; ++s) {
        for (size_t j = 0; j < rounds[s].size(); ++j) {
          for (const PipeTransfer& t : rounds[s][j].sends) sent.insert({j, s, t.peer, t.op, t.micro, t.chunk});
          for (const PipeTransfer& t : rounds[s][j].recvs) received.insert({j, t.peer, s, t.op, t.micro, t.chunk});
        }
      }
      CHECK(sent == received);
      // Every virtual-stage boundary that crosses stages carries m activations and m gradients.
      const int crossings = stages > 1 ? stages * v - 1 : 0;
      CHECK(sent.size() == static_cast<size_t>(2 * micro * crossings));
    }
  }
}

TEST_CASE("bubble_fraction: the idle share of the slowest stage's wall time", "[train][pipeline]") {
  CHECK(bubble_fraction({3.0, 3.0}, 4.0) == Approx(0.25));
  CHECK(bubble_fraction({1.0, 3.0}, 4.0) == Approx(0.5));
  CHECK(bubble_fraction({2.0, 2.0}, 2.0) == 0.0);
  CHECK(bubble_fraction({2.5}, 2.0) == 0.0);  // timer noise: busy above wall is clamped, never negative
  CHECK(bubble_fraction({1.0}, 0.0) == 0.0);
}

}  // namespace
}  // namespace moe

// The bubble of the pipeline schedules, asserted exactly: each stage's actions (pipeline_actions)
// are played on a simulated clock where a forward waits for the previous stage's forward of the
// same micro-batch and a backward for the next stage's backward; with equal stages the bubble
// (bubble_fraction, the formula the trainer reports) must be the ideal (p - 1) / (m + p - 1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "src/train/pipeline_schedule.h"

namespace moe {
namespace {

struct Timeline {
  std::vector<double> busy;  // per stage
  double wall = 0;
};

// Plays every stage's schedule; forward costs t_fwd and backward t_bwd on every stage. Fails the
// test (deadlock) when no stage can make progress.
Timeline simulate(const std::string& schedule, int stages, int micro_batches, double t_fwd, double t_bwd) {
  std::vector<std::vector<PipeAction>> actions;
  for (int s = 0; s < stages; ++s) actions.push_back(pipeline_actions(schedule, stages, s, micro_batches));
  std::vector<size_t> next(static_cast<size_t>(stages), 0);
  std::vector<double> clock(static_cast<size_t>(stages), 0.0);
  std::map<std::pair<int, int>, double> fwd_done, bwd_done;  // (stage, micro) -> finish time
  Timeline t;
  t.busy.assign(static_cast<size_t>(stages), 0.0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < stages; ++s) {
      if (next[s] == actions[s].size()) continue;
      const PipeAction a = actions[s][next[s]];
      const bool fwd = a.op == PipeOp::forward;
      double ready = clock[s];
      if (fwd && s > 0) {
        auto it = fwd_done.find({s - 1, a.micro});
        if (it == fwd_done.end()) continue;
        ready = std::max(ready, it->second);
      }
      if (!fwd && s < stages - 1) {
        auto it = bwd_done.find({s + 1, a.micro});
        if (it == bwd_done.end()) continue;
        ready = std::max(ready, it->second);
      }
      if (!fwd) REQUIRE(fwd_done.count({s, a.micro}) == 1);  // its own forward ran first
      const double cost = fwd ? t_fwd : t_bwd;
      clock[s] = ready + cost;
      t.busy[s] += cost;
      (fwd ? fwd_done : bwd_done)[{s, a.micro}] = clock[s];
      ++next[s];
      progress = true;
    }
  }
  for (int s = 0; s < stages; ++s) REQUIRE(next[s] == actions[s].size());  // no deadlock
  t.wall = *std::max_element(clock.begin(), clock.end());
  return t;
}

TEST_CASE("1F1B and GPipe have the ideal bubble (p - 1) / (m + p - 1) with equal stages", "[train][pipeline]") {
  for (const std::string schedule : {"1f1b", "gpipe"}) {
    for (int stages : {1, 2, 3, 4, 8}) {
      for (int micro : {1, 2, 3, 4, 8, 16}) {
        INFO(schedule << " p=" << stages << " m=" << micro);
        Timeline t = simulate(schedule, stages, micro, 1.0, 2.0);
        const double expected = static_cast<double>(stages - 1) / (micro + stages - 1);
        CHECK(ideal_bubble_fraction(stages, micro) == Approx(expected).margin(1e-12));
        CHECK(bubble_fraction(t.busy, t.wall) == Approx(expected).margin(1e-12));
        CHECK(t.wall == Approx(3.0 * (micro + stages - 1)));
      }
    }
  }
  // Known values: 4 stages, 8 micro-batches idle 3/11 of the time; 2 stages and 1 micro-batch half.
  CHECK(bubble_fraction(simulate("1f1b", 4, 8, 1, 2).busy, simulate("1f1b", 4, 8, 1, 2).wall) ==
        Approx(3.0 / 11.0));
  CHECK(bubble_fraction(simulate("gpipe", 2, 1, 1, 2).busy, simulate("gpipe", 2, 1, 1, 2).wall) == Approx(0.5));
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

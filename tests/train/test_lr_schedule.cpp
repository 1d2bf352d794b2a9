// Learning-rate schedules against their definitions at chosen steps.
#include <catch2/catch.hpp>

#include <cmath>

#include "src/train/lr_schedule.h"

using namespace moe;

TEST_CASE("every schedule warms up linearly", "[train][schedule]") {
  OptimConfig o;
  o.lr = 1.0;
  o.min_lr = 0.1;
  for (const char* kind : {"cosine", "linear", "constant", "step", "wsd"}) {
    ScheduleConfig s;
    s.kind = kind;
    s.warmup_steps = 4;
    REQUIRE(learning_rate(s, o, 0, 100) == Approx(0.25));
    REQUIRE(learning_rate(s, o, 3, 100) == Approx(1.0));
  }
}

TEST_CASE("decay shapes", "[train][schedule]") {
  OptimConfig o;
  o.lr = 1.0;
  o.min_lr = 0.1;
  ScheduleConfig s;
  s.warmup_steps = 10;
  s.kind = "cosine";
  REQUIRE(learning_rate(s, o, 10, 110) == Approx(1.0));
  REQUIRE(learning_rate(s, o, 60, 110) == Approx(0.55));  // halfway: (lr + min_lr) / 2
  REQUIRE(learning_rate(s, o, 110, 110) == Approx(0.1));
  s.kind = "linear";
  REQUIRE(learning_rate(s, o, 35, 110) == Approx(1.0 - 0.9 * 0.25));
  s.kind = "constant";
  REQUIRE(learning_rate(s, o, 100, 110) == Approx(1.0));
  s.kind = "step";  // DeepSeekMoE: x0.316 at 80% and again at 90% of the steps
  s.step_fractions = {0.8, 0.9};
  s.step_factor = 0.316;
  REQUIRE(learning_rate(s, o, 79, 100) == Approx(1.0));
  REQUIRE(learning_rate(s, o, 80, 100) == Approx(0.316));
  REQUIRE(learning_rate(s, o, 95, 100) == Approx(0.316 * 0.316));
  s.kind = "wsd";
  s.decay_fraction = 0.2;
  REQUIRE(learning_rate(s, o, 79, 100) == Approx(1.0));
  REQUIRE(learning_rate(s, o, 90, 100) == Approx(0.55));
  REQUIRE(learning_rate(s, o, 100, 100) == Approx(0.1));
}

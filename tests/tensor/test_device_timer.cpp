// DeviceIntervals on the CPU (the host clock): the busy time is the sum of the begin-end
// intervals only, the wall time spans start to stop, and reset() starts a new step reusing the
// marks (tests/cuda/test_cuda_device_timer.cpp times GPU work with events).
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "src/tensor/device_timer.h"

namespace moe {

TEST_CASE("DeviceIntervals sums the marked intervals and spans the step", "[tensor][timer]") {
  using std::chrono::milliseconds;
  DeviceIntervals t(Device::cpu());
  for (int step = 0; step < 2; ++step) {
    t.reset();
    t.start();
    std::this_thread::sleep_for(milliseconds(30));  // waiting: not busy
    for (int i = 0; i < 2; ++i) {
      t.begin();
      std::this_thread::sleep_for(milliseconds(20));
      t.end();
      std::this_thread::sleep_for(milliseconds(30));
    }
    t.stop();
    INFO("step " << step << " busy " << t.busy_ms() << " wall " << t.wall_ms());
    CHECK(t.busy_ms() >= 40.0);
    CHECK(t.busy_ms() < 85.0);  // the 90 ms of waiting are not counted
    CHECK(t.wall_ms() >= 130.0);
    CHECK(t.wall_ms() >= t.busy_ms() + 85.0);
  }
  t.reset();
  t.start();
  t.begin();
  t.end();  // no stop
  REQUIRE_THROWS_WITH(t.busy_ms(), Catch::Contains("DeviceIntervals: 3 marks are not start, begin/end pairs, stop"));
}

}  // namespace moe

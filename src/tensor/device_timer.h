// Time between marks in a device's execution order (benchmarks, pipeline stage times): CUDA
// events on the compute stream of a GPU, the host clock on the CPU.
#pragma once

#include <chrono>
#include <vector>

#include "src/tensor/dtype.h"

namespace moe {

class DeviceTimer {
 public:
  explicit DeviceTimer(Device device);
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;
  void start();
  void stop();
  // From the last start to the last stop; waits for the stop mark (no host synchronisation
  // happens before this call).
  double elapsed_ms();

 private:
  Device device_;
  void* start_event_ = nullptr;  // cudaEvent_t on a GPU
  void* stop_event_ = nullptr;
  std::chrono::steady_clock::time_point start_time_, stop_time_;
};

// Many intervals of one step timed without a host wait between them: begin() and end() record
// marks on the compute stream around each interval (GPU), so a stage's compute is timed from
// when its queued input arrived to when its work finished, and the marks are read once by
// busy_ms() / wall_ms() after the step is queued. start() and stop() bound the step's wall time.
// The events are reused from step to step (reset() starts a new step). CPU: the host clock.
class DeviceIntervals {
 public:
  explicit DeviceIntervals(Device device) : device_(device) {}
  ~DeviceIntervals();
  DeviceIntervals(const DeviceIntervals&) = delete;
  DeviceIntervals& operator=(const DeviceIntervals&) = delete;
  void reset();
  void start() { mark(); }
  void stop() { mark(); }
  void begin() { mark(); }
  void end() { mark(); }
  // The sum of the begin-end intervals; waits for the last mark (GPU).
  double busy_ms();
  // From start to stop; waits for the stop mark (GPU).
  double wall_ms();

 private:
  void mark();
  double between_ms(size_t from, size_t to);
  Device device_;
  std::vector<void*> events_;  // cudaEvent_t on a GPU, grown as needed
  std::vector<std::chrono::steady_clock::time_point> times_;
  size_t used_ = 0;  // marks of this step: start, begin/end pairs, stop
};

}  // namespace moe

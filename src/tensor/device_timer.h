// Time between two marks in a device's execution order (for benchmarks): CUDA events on the
// compute stream of a GPU, the host clock on the CPU.
#pragma once

#include <chrono>

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

}  // namespace moe

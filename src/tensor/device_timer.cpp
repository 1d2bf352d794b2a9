// DeviceTimer and DeviceIntervals: CUDA events recorded on the compute stream, or the host clock.
#include "src/tensor/device_timer.h"

#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

DeviceTimer::DeviceTimer(Device device) : device_(device) {
  if (!device.is_cuda()) return;
#if MOE_WITH_CUDA
  cuda::set_device(device.ordinal);
  start_event_ = cuda::event_create();
  stop_event_ = cuda::event_create();
#else
  MOE_FAIL("DeviceTimer on ", device.str(), " but this build has no CUDA backend");
#endif
}

DeviceTimer::~DeviceTimer() {
#if MOE_WITH_CUDA
  if (start_event_) cuda::event_destroy(static_cast<cudaEvent_t>(start_event_));
  if (stop_event_) cuda::event_destroy(static_cast<cudaEvent_t>(stop_event_));
#endif
}

void DeviceTimer::start() {
#if MOE_WITH_CUDA
  if (device_.is_cuda()) return cuda::event_record(static_cast<cudaEvent_t>(start_event_));
#endif
  start_time_ = std::chrono::steady_clock::now();
}

void DeviceTimer::stop() {
#if MOE_WITH_CUDA
  if (device_.is_cuda()) return cuda::event_record(static_cast<cudaEvent_t>(stop_event_));
#endif
  stop_time_ = std::chrono::steady_clock::now();
}

double DeviceTimer::elapsed_ms() {
#if MOE_WITH_CUDA
  if (device_.is_cuda()) {
    return cuda::event_elapsed_ms(static_cast<cudaEvent_t>(start_event_), static_cast<cudaEvent_t>(stop_event_));
  }
#endif
  return std::chrono::duration<double, std::milli>(stop_time_ - start_time_).count();
}

DeviceIntervals::~DeviceIntervals() {
#if MOE_WITH_CUDA
  for (void* e : events_) cuda::event_destroy(static_cast<cudaEvent_t>(e));
#endif
}

void DeviceIntervals::reset() { used_ = 0; }

void DeviceIntervals::mark() {
#if MOE_WITH_CUDA
  if (device_.is_cuda()) {
    if (used_ == events_.size()) {
      cuda::set_device(device_.ordinal);
      events_.push_back(cuda::event_create());
    }
    cuda::event_record(static_cast<cudaEvent_t>(events_[used_++]));
    return;
  }
#endif
  MOE_CHECK(!device_.is_cuda(), "DeviceIntervals on ", device_.str(), " but this build has no CUDA backend");
  if (used_ == times_.size()) times_.emplace_back();
  times_[used_++] = std::chrono::steady_clock::now();
}

double DeviceIntervals::between_ms(size_t from, size_t to) {
#if MOE_WITH_CUDA
  if (device_.is_cuda()) {
    return cuda::event_elapsed_ms(static_cast<cudaEvent_t>(events_[from]), static_cast<cudaEvent_t>(events_[to]));
  }
#endif
  return std::chrono::duration<double, std::milli>(times_[to] - times_[from]).count();
}

double DeviceIntervals::busy_ms() {
  MOE_CHECK(used_ >= 2 && used_ % 2 == 0, "DeviceIntervals: ", used_, " marks are not start, begin/end pairs, stop");
  double total = 0;
  for (size_t i = 1; i + 2 < used_; i += 2) total += between_ms(i, i + 1);
  return total;
}

double DeviceIntervals::wall_ms() {
  MOE_CHECK(used_ >= 2 && used_ % 2 == 0, "DeviceIntervals: ", used_, " marks are not start, begin/end pairs, stop");
  return between_ms(0, used_ - 1);
}

}  // namespace moe

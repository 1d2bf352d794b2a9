// DeviceTimer: CUDA events recorded on the compute stream, or the host clock.
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

}  // namespace moe

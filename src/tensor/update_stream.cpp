// UpdateStream over the CUDA runtime's update stream (kernels/cuda/runtime.h).
#include "src/tensor/update_stream.h"

#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

UpdateStream::UpdateStream(Device device, bool enabled) {
#if MOE_WITH_CUDA
  active_ = enabled && device.is_cuda();
  if (active_) cuda::set_device(device.ordinal);
#else
  (void)device;
  (void)enabled;
#endif
}

UpdateStream::~UpdateStream() {
  try {
    if (open_) end();
    join();
  } catch (...) {  // no throw from a destructor; a CUDA error resurfaces at the next call
  }
}

void UpdateStream::begin() {
  if (!active_) return;
  MOE_CHECK(!open_, "UpdateStream: begin() twice");
#if MOE_WITH_CUDA
  cuda::update_stream_begin();
#endif
  open_ = true;
}

void UpdateStream::end() {
  if (!open_) return;
#if MOE_WITH_CUDA
  cuda::update_stream_end();
#endif
  open_ = false;
}

void UpdateStream::mark(const std::string& name) {
  if (!active_) return;
  MOE_CHECK(open_, "UpdateStream: mark('", name, "') outside begin() ... end()");
  const int slot = slots_.emplace(name, static_cast<int>(slots_.size())).first->second;
#if MOE_WITH_CUDA
  cuda::update_stream_mark(slot);
#else
  (void)slot;
#endif
}

void UpdateStream::wait(const std::string& name) {
  if (!active_) return;
  auto it = slots_.find(name);
  if (it == slots_.end()) return;
#if MOE_WITH_CUDA
  cuda::main_stream_wait(it->second);
#endif
}

void UpdateStream::join() {
  if (!active_) return;
  MOE_CHECK(!open_, "UpdateStream: join() before end()");
#if MOE_WITH_CUDA
  cuda::update_stream_join();
#endif
}

}  // namespace moe

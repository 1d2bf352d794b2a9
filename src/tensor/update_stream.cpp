// UpdateStream over the CUDA runtime's update stream (kernels/cuda/runtime.h).
#include "src/tensor/update_stream.h"

#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

#if MOE_WITH_CUDA
UpdateStream::UpdateStream(Device device, bool enabled)
    : AuxStream(device, enabled, "UpdateStream", cuda::update_stream_begin, cuda::update_stream_end) {}
#else
UpdateStream::UpdateStream(Device device, bool enabled) : AuxStream(device, enabled, "UpdateStream", nullptr, nullptr) {}
#endif

UpdateStream::~UpdateStream() {
  try {
    end();
    join();
  } catch (...) {  // no throw from a destructor; a CUDA error resurfaces at the next call
  }
}

void UpdateStream::mark(const std::string& name) {
  if (!active()) return;
  MOE_CHECK(open(), "UpdateStream: mark('", name, "') outside begin() ... end()");
  const int slot = slots_.emplace(name, static_cast<int>(slots_.size())).first->second;
#if MOE_WITH_CUDA
  cuda::update_stream_mark(slot);
#else
  (void)slot;
#endif
}

void UpdateStream::wait(const std::string& name) {
  if (!active()) return;
  auto it = slots_.find(name);
  if (it == slots_.end()) return;
#if MOE_WITH_CUDA
  cuda::main_stream_wait(it->second);
#endif
}

void UpdateStream::join() {
  if (!active()) return;
  MOE_CHECK(!open(), "UpdateStream: join() before end()");
#if MOE_WITH_CUDA
  cuda::update_stream_join();
#endif
}

}  // namespace moe

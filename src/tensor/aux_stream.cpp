// AuxStream: activation and the begin/end switch of the engine's second streams.
#include "src/tensor/aux_stream.h"

#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

AuxStream::AuxStream(Device device, bool enabled, const char* name, void (*enter)(), void (*leave)())
    : name_(name), enter_(enter), leave_(leave) {
#if MOE_WITH_CUDA
  active_ = enabled && device.is_cuda() && enter != nullptr;
  if (active_) cuda::set_device(device.ordinal);
#else
  (void)device;
  (void)enabled;
#endif
}

void AuxStream::enter() {
  if (!active_) return;
  MOE_CHECK(!open_, name_, ": begin() twice");
  enter_();
  open_ = true;
}

void AuxStream::leave() {
  if (!open_) return;
  leave_();
  open_ = false;
}

}  // namespace moe

// SideStream over the CUDA runtime's side stream (kernels/cuda/runtime.h).
#include "src/tensor/side_stream.h"

#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

SideStream::SideStream(Device device, bool enabled) {
#if MOE_WITH_CUDA
  active_ = enabled && device.is_cuda();
  if (active_) cuda::set_device(device.ordinal);
#else
  (void)device;
  (void)enabled;
#endif
}

SideStream::~SideStream() {
  try {
    if (open_) end();
    if (pending_) join();
  } catch (...) {  // no throw from a destructor; a CUDA error resurfaces at the next call
  }
}

void SideStream::begin() {
  if (!active_) return;
  MOE_CHECK(!open_, "SideStream: begin() twice");
#if MOE_WITH_CUDA
  cuda::side_stream_begin();
#endif
  open_ = pending_ = true;
}

void SideStream::end() {
  if (!open_) return;
#if MOE_WITH_CUDA
  cuda::side_stream_end();
#endif
  open_ = false;
}

void SideStream::join() {
  if (!pending_) return;
  MOE_CHECK(!open_, "SideStream: join() before end()");
#if MOE_WITH_CUDA
  cuda::side_stream_join();
#endif
  pending_ = false;
}

}  // namespace moe

// SideStream over the CUDA runtime's side stream (kernels/cuda/runtime.h).
#include "src/tensor/side_stream.h"

#include "src/util/check.h"

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

#if MOE_WITH_CUDA
SideStream::SideStream(Device device, bool enabled)
    : AuxStream(device, enabled, "SideStream", cuda::side_stream_begin, cuda::side_stream_end) {}
#else
SideStream::SideStream(Device device, bool enabled) : AuxStream(device, enabled, "SideStream", nullptr, nullptr) {}
#endif

SideStream::~SideStream() {
  try {
    end();
    join();
  } catch (...) {  // no throw from a destructor; a CUDA error resurfaces at the next call
  }
}

void SideStream::begin() {
  enter();
  pending_ = pending_ || open();
}

void SideStream::join() {
  if (!pending_) return;
  MOE_CHECK(!open(), "SideStream: join() before end()");
#if MOE_WITH_CUDA
  cuda::side_stream_join();
#endif
  pending_ = false;
}

}  // namespace moe

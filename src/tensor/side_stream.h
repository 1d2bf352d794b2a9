// Work beside the compute stream on a GPU (the shared experts beside the routed ones): between
// begin() and end() the engine's kernels, GEMMs and allocations go to a second CUDA stream that
// first waits for everything queued before begin(); join() makes the compute stream wait for that
// work. Tensors the side work reads must stay alive until the join. Inactive (on the CPU, or when
// not enabled): every call does nothing and the work runs in order.
#pragma once

#include "src/tensor/dtype.h"

namespace moe {

class SideStream {
 public:
  SideStream(Device device, bool enabled);
  ~SideStream();  // a scope left open (an exception) is ended and joined
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  bool active() const { return active_; }
  void begin();
  void end();
  void join();

 private:
  bool active_ = false, open_ = false, pending_ = false;
};

}  // namespace moe

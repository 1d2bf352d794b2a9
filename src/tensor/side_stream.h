// Work beside the compute stream on a GPU (the shared experts beside the routed ones): between
// begin() and end() the engine's kernels, GEMMs and allocations go to a second CUDA stream that
// first waits for everything queued before begin(); join() makes the compute stream wait for that
// work. Tensors the side work reads must stay alive until the join. Inactive (on the CPU, or when
// not enabled): every call does nothing and the work runs in order.
#pragma once

#include "src/tensor/aux_stream.h"

namespace moe {

class SideStream : public AuxStream {
 public:
  SideStream(Device device, bool enabled);
  ~SideStream();  // a scope left open (an exception) is ended and joined
  void begin();
  void end() { leave(); }
  void join();

 private:
  bool pending_ = false;
};

}  // namespace moe

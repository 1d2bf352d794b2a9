// The optimizer's update beside the next step's forward on a GPU: between begin() and end() the
// engine's kernels go to a stream of their own that first waits for everything queued before
// begin(); mark(name) notes where the update of a named block ends, and wait(name) makes the
// compute stream wait for that point only (a forward reaching the block), join() for all of it.
// Reads back to the host and host waits join by themselves (kernels/cuda/runtime.h). Tensors the
// update reads must stay alive until the join. Inactive (on the CPU, or when not enabled): every
// call does nothing and the work runs in order.
#pragma once

#include <map>
#include <string>

#include "src/tensor/aux_stream.h"

namespace moe {

class UpdateStream : public AuxStream {
 public:
  UpdateStream(Device device, bool enabled);
  ~UpdateStream();  // a scope left open (an exception) is ended and joined
  void begin() { enter(); }
  void end() { leave(); }
  void mark(const std::string& name);
  void wait(const std::string& name);  // nothing when no mark of that name is pending
  void join();

 private:
  std::map<std::string, int> slots_;
};

// begin() ... end() as a scope: an exception between them still ends it, so later work does not
// stay on the update stream.
class UpdateScope {
 public:
  explicit UpdateScope(UpdateStream& s) : s_(s) { s_.begin(); }
  ~UpdateScope() {
    try {
      s_.end();
    } catch (...) {
    }
  }
  UpdateScope(const UpdateScope&) = delete;
  UpdateScope& operator=(const UpdateScope&) = delete;

 private:
  UpdateStream& s_;
};

}  // namespace moe

// What SideStream and UpdateStream share: a second stream of work beside the compute stream,
// active only on a GPU and when enabled (the device is selected at construction), entered by
// begin() and left by end(), which switch the engine's compute stream (kernels/cuda/runtime.h).
#pragma once

#include "src/tensor/dtype.h"

namespace moe {

class AuxStream {
 public:
  AuxStream(const AuxStream&) = delete;
  AuxStream& operator=(const AuxStream&) = delete;
  bool active() const { return active_; }

 protected:
  // name: the class, for messages; enter / leave: the runtime's switch to the stream and back
  // (nullptr without CUDA, where nothing is ever active).
  AuxStream(Device device, bool enabled, const char* name, void (*enter)(), void (*leave)());
  ~AuxStream() = default;
  void enter();  // begin(): an error when already entered
  void leave();  // end(): nothing when not entered
  bool open() const { return open_; }
  const char* name() const { return name_; }

 private:
  bool active_ = false, open_ = false;
  const char* name_;
  void (*enter_)();
  void (*leave_)();
};

}  // namespace moe

// A reusable page-locked host buffer for the small reads back that the host must wait for (the
// expert-parallel count exchange): one DMA and one counted wait per read, no pageable staging.
#pragma once

#include <cstddef>

#include "src/tensor/tensor.h"

namespace moe {

class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  // src's values (elements of sizeof(T) bytes), valid until the next read. From a GPU they come
  // by one copy into page-locked memory (cudaMallocHost, kept and grown as needed) and one wait;
  // from the CPU by a memcpy into ordinary memory.
  template <typename T>
  const T* read(const Tensor& src) {
    MOE_CHECK(src.defined() && dtype_size(src.dtype()) == sizeof(T), "PinnedBuffer::read: a ",
              src.defined() ? dtype_name(src.dtype()) : "undefined", " tensor read as ", sizeof(T), "-byte values");
    return static_cast<const T*>(read_bytes(src));
  }
  // The same read split in two: read_start queues the copy (GPU: into page-locked memory, then an
  // event; CPU: the memcpy at once) and returns; read_finish waits for that event only, so work
  // queued on the device after read_start runs while the host waits. One read at a time.
  void read_start(const Tensor& src);
  template <typename T>
  const T* read_finish() {
    MOE_CHECK(started_ && started_size_ == sizeof(T), "PinnedBuffer::read_finish: no read of ", sizeof(T),
              "-byte values was started");
    return static_cast<const T*>(finish_bytes());
  }
  bool pinned() const { return pinned_; }  // whether the storage is page-locked (last read from a GPU)
  size_t capacity() const { return capacity_; }

 private:
  const void* read_bytes(const Tensor& src);
  void reserve(const Tensor& src);  // storage of the right kind for src's bytes
  const void* finish_bytes();
  void release();

  void* data_ = nullptr;
  size_t capacity_ = 0;
  bool pinned_ = false;
  bool started_ = false;
  size_t started_size_ = 0;
  void* done_ = nullptr;  // the read's cudaEvent_t (GPU reads)
};

}  // namespace moe

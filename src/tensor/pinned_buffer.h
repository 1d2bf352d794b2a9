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
  bool pinned() const { return pinned_; }  // whether the storage is page-locked (last read from a GPU)
  size_t capacity() const { return capacity_; }

 private:
  const void* read_bytes(const Tensor& src);
  void release();

  void* data_ = nullptr;
  size_t capacity_ = 0;
  bool pinned_ = false;
};

}  // namespace moe

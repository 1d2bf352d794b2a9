// PinnedBuffer: page-locked storage from the CUDA runtime for reads from a GPU, ordinary memory
// for reads from the CPU; the storage is kept between reads and grown when a read needs more.
#include "src/tensor/pinned_buffer.h"

#include <cstdlib>
#include <cstring>

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

PinnedBuffer::~PinnedBuffer() { release(); }

void PinnedBuffer::release() {
#if MOE_WITH_CUDA
  if (pinned_) cuda::pinned_free(data_);
#endif
  if (!pinned_) std::free(data_);
  data_ = nullptr;
  capacity_ = 0;
  pinned_ = false;
}

const void* PinnedBuffer::read_bytes(const Tensor& src) {
  const size_t bytes = src.nbytes();
  const bool from_gpu = src.is_cuda();
  if (bytes > capacity_ || from_gpu != pinned_) {
    release();
    const size_t size = bytes > 0 ? bytes : 1;
#if MOE_WITH_CUDA
    if (from_gpu) {
      cuda::set_device(src.device().ordinal);
      data_ = cuda::pinned_alloc(size);
      pinned_ = true;
    }
#endif
    if (!from_gpu) data_ = std::malloc(size);
    MOE_CHECK(data_ != nullptr, "PinnedBuffer: out of host memory allocating ", size, " bytes");
    capacity_ = size;
  }
  if (bytes == 0) return data_;
  if (!from_gpu) {
    std::memcpy(data_, src.data(), bytes);
    return data_;
  }
#if MOE_WITH_CUDA
  cuda::set_device(src.device().ordinal);
  cuda::copy(data_, src.data(), bytes, cudaMemcpyDeviceToHost);  // one DMA, one counted wait
#endif
  return data_;
}

}  // namespace moe

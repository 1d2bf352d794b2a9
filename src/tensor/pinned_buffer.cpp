// PinnedBuffer: page-locked storage from the CUDA runtime for reads from a GPU, ordinary memory
// for reads from the CPU; the storage is kept between reads and grown when a read needs more.
#include "src/tensor/pinned_buffer.h"

#include <cstdlib>
#include <cstring>

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

PinnedBuffer::~PinnedBuffer() {
#if MOE_WITH_CUDA
  if (done_) cuda::event_destroy(static_cast<cudaEvent_t>(done_));
#endif
  release();
}

void PinnedBuffer::release() {
#if MOE_WITH_CUDA
  if (pinned_) cuda::pinned_free(data_);
#endif
  if (!pinned_) std::free(data_);
  data_ = nullptr;
  capacity_ = 0;
  pinned_ = false;
}

void PinnedBuffer::reserve(const Tensor& src) {
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
}

const void* PinnedBuffer::read_bytes(const Tensor& src) {
  reserve(src);
  const size_t bytes = src.nbytes();
  const bool from_gpu = src.is_cuda();
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

void PinnedBuffer::read_start(const Tensor& src) {
  MOE_CHECK(src.defined(), "PinnedBuffer::read_start: the tensor is undefined");
  reserve(src);
  started_ = true;
  started_size_ = dtype_size(src.dtype());
  if (!src.is_cuda()) {
    if (src.nbytes() > 0) std::memcpy(data_, src.data(), src.nbytes());
    return;
  }
#if MOE_WITH_CUDA
  cuda::set_device(src.device().ordinal);
  if (done_ == nullptr) {
    cudaEvent_t event;
    MOE_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming) == cudaSuccess,
              "PinnedBuffer: cannot create a CUDA event");
    done_ = event;
  }
  cuda::copy_to_host_async(data_, src.data(), src.nbytes(), static_cast<cudaEvent_t>(done_));
#endif
}

const void* PinnedBuffer::finish_bytes() {
  started_ = false;
#if MOE_WITH_CUDA
  if (pinned_) cuda::wait_event(static_cast<cudaEvent_t>(done_));
#endif
  return data_;
}

}  // namespace moe

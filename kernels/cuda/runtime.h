// CUDA runtime services the engine uses: device selection, the compute stream, a
// stream-ordered memory pool and copies. Plain C++ (no Tensor), compiled only with CUDA.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace moe::cuda {

int device_count();             // 0 when no driver or no GPU
void set_device(int ordinal);   // also selects the stream and the cuBLAS handles below
cudaStream_t compute_stream();  // the one stream all engine kernels run on
void* pool_alloc(size_t bytes);  // stream-ordered (cudaMallocAsync on compute_stream)
void pool_free(void* ptr);
void copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);  // synchronous on the stream
void memset_zero(void* ptr, size_t bytes);
void synchronize();

// Timing in the compute stream's order: events with timing enabled.
cudaEvent_t event_create();
void event_destroy(cudaEvent_t event);
void event_record(cudaEvent_t event);
float event_elapsed_ms(cudaEvent_t start, cudaEvent_t stop);  // waits for `stop` to complete

}  // namespace moe::cuda

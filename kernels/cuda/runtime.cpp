// CUDA runtime services: the compute stream (the main one per process, or the side one inside a
// side-stream scope) and a stream-ordered pool that keeps freed memory for reuse (release
// threshold = unlimited), so steady-state steps never cudaMalloc.
#include "kernels/cuda/runtime.h"

#include <chrono>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace moe::cuda {

namespace {
cudaStream_t g_stream = nullptr;  // the main stream
cudaStream_t g_side = nullptr;    // the side stream
cudaStream_t g_current = nullptr;
cudaEvent_t g_fork = nullptr, g_join = nullptr;
int g_device = -1;
int64_t g_host_waits = 0;
double g_host_wait_seconds = 0;
}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

void set_device(int ordinal) {
  if (g_device == ordinal) return;
  CUDA_CHECK(cudaSetDevice(ordinal));
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ordinal));
  uint64_t threshold = UINT64_MAX;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&g_side, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&g_fork, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&g_join, cudaEventDisableTiming));
  g_current = g_stream;
  g_device = ordinal;
}

cudaStream_t compute_stream() {
  if (g_device < 0) set_device(0);
  return g_current;
}

void side_stream_begin() {
  cudaStream_t main = compute_stream();
  MOE_CHECK(main == g_stream, "side_stream_begin: already on the side stream");
  CUDA_CHECK(cudaEventRecord(g_fork, g_stream));
  CUDA_CHECK(cudaStreamWaitEvent(g_side, g_fork, 0));
  g_current = g_side;
}

void side_stream_end() {
  MOE_CHECK(g_current == g_side, "side_stream_end: not on the side stream");
  g_current = g_stream;
}

void side_stream_join() {
  MOE_CHECK(g_current == g_stream, "side_stream_join: still on the side stream");
  CUDA_CHECK(cudaEventRecord(g_join, g_side));
  CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_join, 0));
}

bool on_side_stream() { return g_device >= 0 && g_current == g_side; }

void* pool_alloc(size_t bytes) {
  void* ptr = nullptr;
  if (bytes == 0) return nullptr;
  CUDA_CHECK(cudaMallocAsync(&ptr, bytes, compute_stream()));
  return ptr;
}

void pool_free(void* ptr) {
  if (ptr) CUDA_CHECK(cudaFreeAsync(ptr, compute_stream()));
}

void copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, compute_stream()));
  // From pageable host memory (the engine pins none) cudaMemcpyAsync returns once the source is
  // staged, so the host may reuse it at once and later kernels on the stream see the data: an
  // upload (a batch's tokens) needs no wait. A device-to-device copy is ordered on the stream like
  // a kernel and needs none either; only reads back to the host wait.
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) wait_stream(compute_stream());
}

void memset_zero(void* ptr, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, compute_stream()));
}

void* pinned_alloc(size_t bytes) {
  void* ptr = nullptr;
  if (bytes > 0) CUDA_CHECK(cudaMallocHost(&ptr, bytes));
  return ptr;
}

void pinned_free(void* ptr) {
  if (ptr) cudaFreeHost(ptr);  // no throw: called from destructors
}

bool is_pinned(const void* ptr) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

void synchronize() { wait_stream(compute_stream()); }

void wait_stream(cudaStream_t stream) {
  ++g_host_waits;
  const auto start = std::chrono::steady_clock::now();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  g_host_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void copy_to_host_async(void* dst, const void* src, size_t bytes, cudaEvent_t done) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, compute_stream()));
  CUDA_CHECK(cudaEventRecord(done, compute_stream()));
}

void wait_event(cudaEvent_t event) {
  ++g_host_waits;
  const auto start = std::chrono::steady_clock::now();
  CUDA_CHECK(cudaEventSynchronize(event));
  g_host_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t host_wait_count() { return g_host_waits; }

double host_wait_seconds() { return g_host_wait_seconds; }

cudaEvent_t event_create() {
  cudaEvent_t event;
  CUDA_CHECK(cudaEventCreate(&event));
  return event;
}

void event_destroy(cudaEvent_t event) { cudaEventDestroy(event); }  // no throw: called from destructors

void event_record(cudaEvent_t event) { CUDA_CHECK(cudaEventRecord(event, compute_stream())); }

float event_elapsed_ms(cudaEvent_t start, cudaEvent_t stop) {
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return ms;
}


}  // namespace moe::cuda

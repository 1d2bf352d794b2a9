// CUDA runtime services: the compute stream (the main one per process, or the side one inside a
// side-stream scope) and a stream-ordered pool that keeps freed memory for reuse (release
// threshold = unlimited), so steady-state steps never cudaMalloc.
#include "kernels/cuda/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "kernels/cuda/cuda_check.h"

namespace moe::cuda {

namespace {
cudaStream_t g_stream = nullptr;  // the main stream
cudaStream_t g_side = nullptr;    // the side stream
cudaStream_t g_update = nullptr;  // the optimizer's update stream
cudaStream_t g_current = nullptr;
cudaEvent_t g_fork = nullptr, g_join = nullptr, g_update_fork = nullptr, g_update_join = nullptr;
std::vector<cudaEvent_t> g_update_marks;  // by slot, created on first use
std::vector<bool> g_mark_pending;         // a mark recorded since the last join
bool g_update_pending = false;
int g_device = -1;
int64_t g_host_waits = 0;
double g_host_wait_seconds = 0;
enum class Priority { lowest, highest };

// A non-blocking stream of the current device at its lowest or highest stream priority.
cudaStream_t new_stream_at(Priority priority) {
  int lowest = 0, highest = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking,
                                          priority == Priority::highest ? highest : lowest));
  return stream;
}
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
  // The main and side streams carry the step's critical path and get the highest priority; the
  // update stream the lowest, so where both have blocks waiting for a multiprocessor the block
  // scheduler starts the step's first (a persistent GEMM's blocks included). Priority picks the
  // next block to start; it does not preempt a resident one.
  g_stream = new_stream_at(Priority::highest);
  g_side = new_stream_at(Priority::highest);
  g_update = new_stream_at(Priority::lowest);
  for (cudaEvent_t* e : {&g_fork, &g_join, &g_update_fork, &g_update_join}) {
    CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
  g_current = g_stream;
  g_device = ordinal;
}

cudaStream_t new_high_priority_stream() { return new_stream_at(Priority::highest); }

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

void update_stream_begin() {
  cudaStream_t main = compute_stream();
  MOE_CHECK(main == g_stream, "update_stream_begin: not on the main stream");
  CUDA_CHECK(cudaEventRecord(g_update_fork, g_stream));
  CUDA_CHECK(cudaStreamWaitEvent(g_update, g_update_fork, 0));
  g_current = g_update;
  g_update_pending = true;
}

void update_stream_end() {
  MOE_CHECK(g_current == g_update, "update_stream_end: not on the update stream");
  g_current = g_stream;
}

void update_stream_mark(int slot) {
  MOE_CHECK(slot >= 0, "update_stream_mark: slot ", slot);
  compute_stream();
  const auto at = static_cast<size_t>(slot);
  while (g_update_marks.size() <= at) {
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    g_update_marks.push_back(e);
    g_mark_pending.push_back(false);
  }
  CUDA_CHECK(cudaEventRecord(g_update_marks[at], g_update));
  g_mark_pending[at] = true;
}

void main_stream_wait(int slot) {
  const auto at = static_cast<size_t>(slot);
  if (!g_update_pending || slot < 0 || at >= g_mark_pending.size() || !g_mark_pending[at]) return;
  CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_update_marks[at], 0));
  g_mark_pending[at] = false;  // waited once: later main-stream work is ordered after it
}

void update_stream_join() {
  if (!g_update_pending) return;
  MOE_CHECK(g_current != g_update, "update_stream_join: still on the update stream");
  CUDA_CHECK(cudaEventRecord(g_update_join, g_update));
  CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_update_join, 0));
  g_update_pending = false;
  std::fill(g_mark_pending.begin(), g_mark_pending.end(), false);
}

bool update_pending() { return g_update_pending; }

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
  // An upload writes fresh memory (a batch's tokens) and may overlap a pending update; anything
  // reading device memory on the main stream sees the update finished.
  if (kind != cudaMemcpyHostToDevice && compute_stream() == g_stream) update_stream_join();
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
  if (stream == g_stream && g_current != g_update) update_stream_join();
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

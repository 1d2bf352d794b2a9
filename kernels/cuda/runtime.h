// CUDA runtime services the engine uses: device selection, the compute stream, a
// stream-ordered memory pool and copies. Plain C++ (no Tensor), compiled only with CUDA.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace moe::cuda {

int device_count();             // 0 when no driver or no GPU
void set_device(int ordinal);   // also selects the stream and the cuBLAS handles below
cudaStream_t compute_stream();  // the stream engine kernels run on: the main one, or the side one (below)
// A new non-blocking stream at the device's highest priority, as the main and side streams have:
// for work on the step's critical path (NCCL's gradient reductions and all-to-alls).
cudaStream_t new_high_priority_stream();
// A second stream for work independent of the main stream's (the shared experts beside the
// routed ones). side_stream_begin: the side stream waits for the work queued on the main one so
// far, and compute_stream() (kernels, cuBLAS, pool allocations and frees) is the side stream until
// side_stream_end. side_stream_join: the main stream waits for the side work queued so far. A
// tensor the side work reads must outlive the join (frees are ordered on the stream that frees).
void side_stream_begin();
void side_stream_end();
void side_stream_join();
bool on_side_stream();
// A third stream for the optimizer's update, overlapping the next step's forward, at the lowest
// stream priority (the main and side streams have the highest).
// update_stream_begin: the update stream waits for the work queued on the main one so far, and
// compute_stream() is the update stream until update_stream_end. update_stream_mark(slot):
// records event `slot` after the update work queued so far; main_stream_wait(slot): the main stream
// waits for that event (nothing when no update is pending). update_stream_join: the main stream
// waits for all update work queued so far, and no update is pending. Every read back to the host,
// device-to-device copy and host wait on the main stream joins first, so what the host reads is
// updated. A tensor the update reads must outlive the join.
void update_stream_begin();
void update_stream_end();
void update_stream_mark(int slot);
void main_stream_wait(int slot);
void update_stream_join();
bool update_pending();
void* pool_alloc(size_t bytes);  // stream-ordered (cudaMallocAsync on compute_stream)
void pool_free(void* ptr);
// Synchronous on the stream, except uploads from (pageable) host memory: no host wait.
void copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
void memset_zero(void* ptr, size_t bytes);
// Page-locked host memory (cudaMallocHost): a read back into it is one DMA, no staging copy.
void* pinned_alloc(size_t bytes);
void pinned_free(void* ptr);
bool is_pinned(const void* ptr);  // whether ptr lies in page-locked host memory of this process
void synchronize();
// A read back split in two: queue the device-to-host copy on the compute stream and record
// `done` after it (no wait); then wait_event waits for that event only (counted as wait_stream),
// while the work queued after the copy keeps running.
void copy_to_host_async(void* dst, const void* src, size_t bytes, cudaEvent_t done);
void wait_event(cudaEvent_t event);

// The host waits for the device (cudaStreamSynchronize), counted: `moe bench train` reports the
// count per step. Every engine wait goes through wait_stream (copies to the host included).
void wait_stream(cudaStream_t stream);
int64_t host_wait_count();
// Seconds the host spent in those waits.
double host_wait_seconds();

// Timing events on the compute stream (`moe bench train --breakdown`).
cudaEvent_t event_create();
void event_destroy(cudaEvent_t event);
void event_record(cudaEvent_t event);
float event_elapsed_ms(cudaEvent_t start, cudaEvent_t stop);  // waits for `stop` (not counted)

}  // namespace moe::cuda

// Collective communication over a group of ranks: one interface, an MPI backend for CPU
// tensors and an NCCL backend for CUDA tensors (bootstrapped over MPI; sub-groups by split).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "src/tensor/tensor.h"

namespace moe {

// All calls are collective over the group unless stated otherwise (send/recv are point to
// point); every rank must make the same calls in the same order. Tensors are contiguous; the
// ops read and write them as flat element ranges, so shapes matter only where stated.
//
// Completion: the MPI backend returns when the call has completed. The NCCL backend enqueues
// the collective on moe::cuda::compute_stream() and returns; later work on that stream (all
// engine kernels and copies) sees the result. Host-vector calls are synchronous on both.

// One point-to-point transfer of batch_send_recv: `tensor` goes to (send) or comes from `peer`.
struct P2pOp {
  Tensor tensor;
  int peer = 0;
  bool send = false;
};
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The kind of tensors this communicator moves (CPU for MPI, the CUDA device for NCCL).
  virtual Device device() const = 0;

  // x[n] <- sum over ranks of x[n], in place.
  virtual void all_reduce_sum(Tensor& x) = 0;
  // x[n] <- (sum over ranks of x[n]) / size, in place; floating dtypes only. NCCL averages
  // inside the collective (ncclAvg); MPI sums then scales on the host.
  virtual void all_reduce_avg(Tensor& x) = 0;
  // Overlap with compute: starts x <- mean over ranks, ordered after the work already queued on
  // the compute stream, on a stream of its own where the backend has one (NCCL); wait_async()
  // makes later compute-stream work wait for every reduction started so far. The MPI backend
  // completes the reduction at once. x must stay allocated and untouched until wait_async().
  virtual void all_reduce_avg_async(Tensor& x) { all_reduce_avg(x); }
  virtual void wait_async() {}
  // Host values (loss, metrics, grad-norm partials) reduced over ranks, in place.
  virtual void all_reduce_sum(std::vector<double>& values) = 0;
  virtual void all_reduce_max(std::vector<double>& values) = 0;

  // x[n] on every rank <- x[n] of rank root.
  virtual void broadcast(Tensor& x, int root) = 0;
  // in[n] -> out[size * n]: rank r's input lands in out elements [r*n, (r+1)*n).
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  // in[size * n] -> out[n] = sum over ranks of their in elements [rank*n, (rank+1)*n).
  virtual void reduce_scatter_sum(const Tensor& in, Tensor& out) = 0;

  // Rows along dim 0: send[sum(send_counts), ...] -> recv[sum(recv_counts), ...], same row
  // shape and dtype. Rows [sum(send_counts[:r]), +send_counts[r]) go to rank r; rows from rank
  // r land at recv rows [sum(recv_counts[:r]), +recv_counts[r]). Counts are in rows, one per
  // rank; recv_counts must equal what the peers send (see all_to_all_counts).
  virtual void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                            const std::vector<int64_t>& recv_counts) = 0;
  // Host exchange of per-rank counts: returns recv_counts with recv_counts[r] = send_counts[me]
  // as given by rank r. Synchronous (the one host sync an all-to-all dispatch needs).
  virtual std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts) = 0;

  // Point to point; the peer posts the matching call with a tensor of the same byte size.
  // Messages between a pair arrive in the order they were sent.
  virtual void send(const Tensor& x, int peer) = 0;
  virtual void recv(Tensor& x, int peer) = 0;
  // Send to one peer and receive from another (or the same) as one step, so that ranks that
  // exchange in a ring or pipeline cannot deadlock on ordering.
  virtual void send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) = 0;
  // Every send and receive of `ops` posted at once (one NCCL group) and then awaited: ranks that
  // exchange with several peers in one step cannot deadlock on ordering. Between a pair of ranks
  // the messages match in list order.
  virtual void batch_send_recv(std::vector<P2pOp>& ops) = 0;

  // Returns when every rank has entered (NCCL: after this rank's queued GPU work finished).
  virtual void barrier() = 0;

  // MPI_Comm_split semantics: ranks with the same color form a group, ordered by (key, rank).
  // A negative color takes part in the call but joins no group and gets nullptr. The new
  // communicator has the same backend and device.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// The communicator over all ranks of the job for tensors on `device`: MPI for the CPU, NCCL
// for CUDA (selects device.ordinal first). Requires a live MpiEnv (parallel/mpi_env.h).
std::unique_ptr<Communicator> make_world_communicator(Device device);

namespace detail {
// Shared argument checks of the backends; each failure names the call and the mismatch.
void check_comm_tensor(const Tensor& x, Device device, const char* call);
void check_same_dtype(const Tensor& a, const Tensor& b, const char* call);
// in[n], out[factor * n] (all_gather: factor = size; reduce_scatter: in and out swapped).
void check_numel_ratio(const Tensor& small, const Tensor& large, int factor, const char* call);
// Elements per row along dim 0 (the product of the remaining dims).
int64_t row_numel(const Tensor& t);
void check_all_to_all_args(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                           const std::vector<int64_t>& recv_counts, int size);
}  // namespace detail

}  // namespace moe

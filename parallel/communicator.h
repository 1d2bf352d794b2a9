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

// A collective started by a *_start call and not yet awaited. wait() completes it (idempotent):
// on MPI the host waits for the non-blocking call; on NCCL later compute-stream work waits for
// the communication stream (no host wait). The handle keeps the tensors alive until then; one
// dropped without wait() waits in its destructor.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

// Bytes this rank sends, counted per kind as a bandwidth-optimal (ring) algorithm sends them:
// an all-reduce of n bytes over N ranks 2(N-1)/N * n, a reduce-scatter the bytes of the parts
// other ranks keep, an all-to-all the rows that leave this rank. Groups of one rank send nothing.
struct CommTraffic {
  int64_t reduction_bytes = 0;  // all-reduce and reduce-scatter of tensors
  int64_t all_to_all_bytes = 0;
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
  // Variable parts: in[sum(counts)] -> out[counts[rank]] = sum over ranks of their in elements
  // [sum(counts[:rank]), +counts[rank]). counts has one entry per rank, >= 0 (zeros allowed).
  // out is either apart from in, or exactly this rank's part of in (in place: the rest of in is
  // then left undefined). (ZeRO: a bucket of the flat gradients cut at the shard borders.)
  virtual void reduce_scatter_v_sum(const Tensor& in, const std::vector<int64_t>& counts, Tensor& out) = 0;

  // Rows along dim 0: send[sum(send_counts), ...] -> recv[sum(recv_counts), ...], same row
  // shape and dtype. Rows [sum(send_counts[:r]), +send_counts[r]) go to rank r; rows from rank
  // r land at recv rows [sum(recv_counts[:r]), +recv_counts[r]). Counts are in rows, one per
  // rank; recv_counts must equal what the peers send (see all_to_all_counts).
  virtual void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                            const std::vector<int64_t>& recv_counts) = 0;
  // Host exchange of per-rank counts: returns recv_counts with recv_counts[r] = send_counts[me]
  // as given by rank r. Synchronous (the one host sync an all-to-all dispatch needs).
  virtual std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts) = 0;
  // all_to_all_v split in two: starts the exchange (MPI: MPI_Ialltoallv; NCCL: on a
  // communication stream of its own, ordered after the compute stream's work so far) and returns
  // at once; the handle's wait() completes it. Work queued in between overlaps the exchange; it
  // must not touch send or recv. The base implementation completes at once.
  virtual std::unique_ptr<PendingCollective> all_to_all_v_start(const Tensor& send,
                                                                const std::vector<int64_t>& send_counts, Tensor& recv,
                                                                const std::vector<int64_t>& recv_counts);
  // Collectives started and not yet awaited (the split is observable: tests read it).
  int in_flight() const { return in_flight_; }

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

  // What this rank has sent so far (see CommTraffic); reset_traffic() starts a new count.
  const CommTraffic& traffic() const { return traffic_; }
  void reset_traffic() { traffic_ = {}; }

 protected:
  // Bookkeeping the backends share.
  void count_all_reduce(int64_t bytes);
  void count_reduce_scatter(int64_t total_bytes, int64_t own_bytes);
  void count_all_to_all(int64_t bytes_sent_elsewhere);
  // The handles of *_start calls report their start and completion.
  friend class PendingCounter;
  int in_flight_ = 0;

 private:
  CommTraffic traffic_;
};

// Counts a started collective in its communicator's in_flight() until done() (or destruction).
class PendingCounter {
 public:
  explicit PendingCounter(Communicator& comm) : comm_(&comm) { ++comm_->in_flight_; }
  ~PendingCounter() { done(); }
  PendingCounter(const PendingCounter&) = delete;
  PendingCounter& operator=(const PendingCounter&) = delete;
  void done() {
    if (comm_ != nullptr) --comm_->in_flight_;
    comm_ = nullptr;
  }

 private:
  Communicator* comm_;
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
// counts: one per rank, each >= 0, summing to in's elements; out has counts[rank] and is apart
// from in or exactly this rank's part of it. Returns whether out is in place.
bool check_reduce_scatter_v_args(const Tensor& in, const std::vector<int64_t>& counts, const Tensor& out, int size,
                                 int rank);
// Rows this rank sends to other ranks (its own block stays).
int64_t rows_sent_elsewhere(const std::vector<int64_t>& send_counts, int rank);
void check_all_to_all_args(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                           const std::vector<int64_t>& recv_counts, int size);
}  // namespace detail

}  // namespace moe

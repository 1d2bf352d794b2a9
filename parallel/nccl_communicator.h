// The NCCL backend of Communicator: CUDA tensors (bf16, f32, f64, i32, i64) on one device, with
// collectives enqueued on moe::cuda::compute_stream(). Host values and bootstrap go over MPI.
#pragma once

#include <mpi.h>
#include <nccl.h>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace moe {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over comm's ranks: selects device, rank 0 of comm creates the ncclUniqueId and
  // broadcasts it over MPI, then every rank joins. Frees comm on destruction when owns.
  NcclCommunicator(MPI_Comm comm, bool owns, Device device);
  ~NcclCommunicator() override;

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  Device device() const override { return device_; }

  void all_reduce_sum(Tensor& x) override;
  void all_reduce_avg(Tensor& x) override;
  void all_reduce_avg_async(Tensor& x) override;
  void wait_async() override;
  void all_reduce_sum(std::vector<double>& values) override;
  void all_reduce_max(std::vector<double>& values) override;
  void broadcast(Tensor& x, int root) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void reduce_scatter_sum(const Tensor& in, Tensor& out) override;
  void reduce_scatter_v_sum(const Tensor& in, const std::vector<int64_t>& counts, Tensor& out) override;
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts) override;
  // On the all-to-all stream, after the compute stream's work so far; wait() orders the compute
  // stream after it (events, no host wait).
  std::unique_ptr<PendingCollective> all_to_all_v_start(const Tensor& send, const std::vector<int64_t>& send_counts,
                                                        Tensor& recv, const std::vector<int64_t>& recv_counts) override;
  void send(const Tensor& x, int peer) override;
  void recv(Tensor& x, int peer) override;
  void send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) override;
  void batch_send_recv(std::vector<P2pOp>& ops) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  cudaStream_t async_stream();  // created on first use; reductions started by all_reduce_avg_async
  cudaStream_t async_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  cudaStream_t a2a_stream();  // created on first use; all-to-alls started by all_to_all_v_start
  cudaStream_t a2a_stream_ = nullptr;
  cudaEvent_t a2a_ready_ = nullptr;
  void enqueue_all_to_all(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                          const std::vector<int64_t>& recv_counts, cudaStream_t stream);
  void check_peer(int peer, const char* call, bool allow_self) const;

  MpiCommunicator host_;  // the same group over MPI: bootstrap, host values, counts, split
  Device device_;
  ncclComm_t nccl_ = nullptr;
};

}  // namespace moe

// The MPI backend of Communicator: CPU tensors. Reductions take f32/f64/i32/i64; data movement
// (broadcast, gathers, all-to-all, send/recv) takes any dtype, bf16 included, as raw elements.
#pragma once

#include <mpi.h>

#include "parallel/communicator.h"

namespace moe {

class MpiCommunicator final : public Communicator {
 public:
  // Wraps comm; frees it on destruction when owns (the communicators that split creates).
  MpiCommunicator(MPI_Comm comm, bool owns);
  ~MpiCommunicator() override;

  MPI_Comm mpi_comm() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::cpu(); }

  void all_reduce_sum(Tensor& x) override;
  void all_reduce_avg(Tensor& x) override;
  void all_reduce_sum(std::vector<double>& values) override;
  void all_reduce_max(std::vector<double>& values) override;
  void broadcast(Tensor& x, int root) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void reduce_scatter_sum(const Tensor& in, Tensor& out) override;
  void reduce_scatter_v_sum(const Tensor& in, const std::vector<int64_t>& counts, Tensor& out) override;
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts) override;
  // MPI_Ialltoallv; wait() is MPI_Wait.
  std::unique_ptr<PendingCollective> all_to_all_v_start(const Tensor& send, const std::vector<int64_t>& send_counts,
                                                        Tensor& recv, const std::vector<int64_t>& recv_counts) override;
  void send(const Tensor& x, int peer) override;
  void recv(Tensor& x, int peer) override;
  void send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) override;
  void batch_send_recv(std::vector<P2pOp>& ops) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

  struct AllToAllPlan;  // the counts, offsets and row type of one all-to-all-v

 private:
  std::unique_ptr<AllToAllPlan> plan_all_to_all(const Tensor& send, const std::vector<int64_t>& send_counts,
                                                const Tensor& recv, const std::vector<int64_t>& recv_counts);
  void check_peer(int peer, const char* call, bool allow_self) const;
  // Posts every transfer of ops (Isend/Irecv, in list order) and waits for all of them.
  void post_and_wait(std::vector<P2pOp>& ops, const char* what);

  MPI_Comm comm_;
  bool owns_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace moe

// NCCL collectives on CUDA tensors, enqueued on the engine's compute stream so they order with
// the kernels around them without host syncs. Compiled to nothing in builds without CUDA.
#if MOE_WITH_CUDA
#include "parallel/nccl_communicator.h"

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/runtime.h"
#include "src/ops/op_profile.h"
#include "parallel/mpi_check.h"
#include "parallel/nccl_check.h"

namespace moe {

namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
  }
  MOE_FAIL("no NCCL type for dtype ", static_cast<int>(dtype));
}

const char* byte_at(const Tensor& t, size_t offset) { return static_cast<const char*>(t.data()) + offset; }
char* byte_at(Tensor& t, size_t offset) { return static_cast<char*>(t.data()) + offset; }

bool overlaps(const Tensor& a, const Tensor& b) {
  auto* a0 = static_cast<const char*>(a.data());
  auto* b0 = static_cast<const char*>(b.data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

}  // namespace

NcclCommunicator::NcclCommunicator(MPI_Comm comm, bool owns, Device device) : host_(comm, owns), device_(device) {
  MOE_CHECK(device.is_cuda(), "NcclCommunicator: needs a CUDA device, got ", device.str());
  cuda::set_device(device.ordinal);
  ncclUniqueId id;
  if (host_.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, host_.mpi_comm()));
  NCCL_CHECK(ncclCommInitRank(&nccl_, host_.size(), id, host_.rank()));
}

NcclCommunicator::~NcclCommunicator() {
  // Destructors must not throw: queued collectives finish first, errors are ignored.
  if (nccl_) {
    cudaStreamSynchronize(cuda::compute_stream());
    if (async_stream_) cudaStreamSynchronize(async_stream_);
    if (a2a_stream_) cudaStreamSynchronize(a2a_stream_);
    ncclCommDestroy(nccl_);
  }
  if (async_stream_) {
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(async_stream_);
  }
  if (a2a_stream_) {
    cudaEventDestroy(a2a_ready_);
    cudaStreamDestroy(a2a_stream_);
  }
}

void NcclCommunicator::check_peer(int peer, const char* call, bool allow_self) const {
  MOE_CHECK(peer >= 0 && peer < size(), call, ": peer ", peer, " is outside the group of ", size(), " ranks");
  MOE_CHECK(allow_self || peer != rank(), call, ": peer ", peer, " is this rank");
}

// x[n] <- sum over ranks of x[n]
void NcclCommunicator::all_reduce_sum(Tensor& x) {
  ops::OpScope timed(ops::OpKind::communication, x);
  detail::check_comm_tensor(x, device_, "all_reduce_sum");
  count_all_reduce(static_cast<int64_t>(x.nbytes()));
  NCCL_CHECK(ncclAllReduce(x.data(), x.data(), static_cast<size_t>(x.numel()), nccl_type(x.dtype()), ncclSum,
                           nccl_, cuda::compute_stream()));
}

// x[n] <- mean over ranks of x[n]
cudaStream_t NcclCommunicator::async_stream() {
  if (async_stream_ == nullptr) {
    async_stream_ = cuda::new_high_priority_stream();  // not behind the update stream's blocks
    CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  return async_stream_;
}

void NcclCommunicator::all_reduce_avg_async(Tensor& x) {
  detail::check_comm_tensor(x, device_, "all_reduce_avg_async");
  MOE_CHECK(is_floating(x.dtype()), "all_reduce_avg_async: averages floating tensors, got ", dtype_name(x.dtype()));
  count_all_reduce(static_cast<int64_t>(x.nbytes()));
  cudaStream_t stream = async_stream();
  // Start after the compute stream's work so far (the gradients being reduced).
  CUDA_CHECK(cudaEventRecord(ready_, cuda::compute_stream()));
  CUDA_CHECK(cudaStreamWaitEvent(stream, ready_, 0));
  NCCL_CHECK(ncclAllReduce(x.data(), x.data(), static_cast<size_t>(x.numel()), nccl_type(x.dtype()), ncclAvg, nccl_,
                           stream));
}

void NcclCommunicator::wait_async() {
  if (async_stream_ == nullptr) return;
  CUDA_CHECK(cudaEventRecord(done_, async_stream_));
  CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), done_, 0));
}

void NcclCommunicator::all_reduce_avg(Tensor& x) {
  ops::OpScope timed(ops::OpKind::communication, x);
  detail::check_comm_tensor(x, device_, "all_reduce_avg");
  MOE_CHECK(is_floating(x.dtype()), "all_reduce_avg: averages floating tensors, got ", dtype_name(x.dtype()));
  count_all_reduce(static_cast<int64_t>(x.nbytes()));
  NCCL_CHECK(ncclAllReduce(x.data(), x.data(), static_cast<size_t>(x.numel()), nccl_type(x.dtype()), ncclAvg,
                           nccl_, cuda::compute_stream()));
}

void NcclCommunicator::all_reduce_sum(std::vector<double>& values) { host_.all_reduce_sum(values); }

void NcclCommunicator::all_reduce_max(std::vector<double>& values) { host_.all_reduce_max(values); }

void NcclCommunicator::broadcast(Tensor& x, int root) {
  ops::OpScope timed(ops::OpKind::communication, x);
  detail::check_comm_tensor(x, device_, "broadcast");
  check_peer(root, "broadcast", /*allow_self=*/true);
  NCCL_CHECK(ncclBroadcast(x.data(), x.data(), x.nbytes(), ncclUint8, root, nccl_, cuda::compute_stream()));
}

// in[n] -> out[size*n]; an `in` that is out's own slot is gathered in place (NCCL supports it).
void NcclCommunicator::all_gather(const Tensor& in, Tensor& out) {
  ops::OpScope timed(ops::OpKind::communication, in);
  detail::check_comm_tensor(in, device_, "all_gather");
  detail::check_comm_tensor(out, device_, "all_gather");
  detail::check_same_dtype(in, out, "all_gather");
  detail::check_numel_ratio(in, out, size(), "all_gather");
  bool in_place = in.data() == byte_at(out, static_cast<size_t>(rank()) * in.nbytes());
  MOE_CHECK(in_place || !overlaps(in, out), "all_gather: in overlaps out other than at this rank's slot");
  NCCL_CHECK(ncclAllGather(in.data(), out.data(), in.nbytes(), ncclUint8, nccl_, cuda::compute_stream()));
}

// in[size*n] -> out[n] = sum over ranks of in[rank*n, (rank+1)*n)
void NcclCommunicator::reduce_scatter_sum(const Tensor& in, Tensor& out) {
  ops::OpScope timed(ops::OpKind::communication, in);
  detail::check_comm_tensor(in, device_, "reduce_scatter_sum");
  detail::check_comm_tensor(out, device_, "reduce_scatter_sum");
  detail::check_same_dtype(in, out, "reduce_scatter_sum");
  detail::check_numel_ratio(out, in, size(), "reduce_scatter_sum");
  bool in_place = out.data() == byte_at(in, static_cast<size_t>(rank()) * out.nbytes());
  MOE_CHECK(in_place || !overlaps(in, out), "reduce_scatter_sum: out overlaps in other than at this rank's slot");
  count_reduce_scatter(static_cast<int64_t>(in.nbytes()), static_cast<int64_t>(out.nbytes()));
  NCCL_CHECK(ncclReduceScatter(in.data(), out.data(), static_cast<size_t>(out.numel()), nccl_type(in.dtype()),
                               ncclSum, nccl_, cuda::compute_stream()));
}

// in[sum(counts)] -> out[counts[rank]]: one ncclReduce per rank's part to that rank, grouped
// (ncclReduceScatter when the parts are equal).
void NcclCommunicator::reduce_scatter_v_sum(const Tensor& in, const std::vector<int64_t>& counts, Tensor& out) {
  ops::OpScope timed(ops::OpKind::communication, in);
  detail::check_comm_tensor(in, device_, "reduce_scatter_v_sum");
  detail::check_comm_tensor(out, device_, "reduce_scatter_v_sum");
  detail::check_reduce_scatter_v_args(in, counts, out, size(), rank());
  count_reduce_scatter(static_cast<int64_t>(in.nbytes()), static_cast<int64_t>(out.nbytes()));
  const ncclDataType_t type = nccl_type(in.dtype());
  const size_t elem = dtype_size(in.dtype());
  cudaStream_t stream = cuda::compute_stream();
  bool equal = true;
  for (int64_t c : counts) equal &= c == counts[0];
  if (equal) {
    if (counts[0] > 0)
      NCCL_CHECK(ncclReduceScatter(in.data(), out.data(), static_cast<size_t>(counts[0]), type, ncclSum, nccl_, stream));
    return;
  }
  size_t at = 0;
  NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size(); ++r) {
    const auto n = static_cast<size_t>(counts[r]);
    const char* part = byte_at(in, at * elem);
    // recvbuff is read on the root only; the others pass their own part.
    void* dst = r == rank() ? out.data() : const_cast<char*>(part);
    if (n > 0) NCCL_CHECK(ncclReduce(part, dst, n, type, ncclSum, r, nccl_, stream));
    at += n;
  }
  NCCL_CHECK(ncclGroupEnd());
}

namespace {

// An all-to-all queued on the communication stream: wait() makes the compute stream wait for it.
class NcclPendingAllToAll final : public PendingCollective {
 public:
  NcclPendingAllToAll(Communicator& comm, Tensor send, Tensor recv)
      : counter_(comm), send_(std::move(send)), recv_(std::move(recv)) {
    CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~NcclPendingAllToAll() override {
    if (!waited_) cudaStreamWaitEvent(cuda::compute_stream(), done_, 0);
    cudaEventDestroy(done_);  // released once the event completes
  }
  cudaEvent_t done() const { return done_; }
  void wait() override {
    if (waited_) return;
    CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), done_, 0));
    waited_ = true;
    counter_.done();
  }

 private:
  PendingCounter counter_;
  Tensor send_, recv_;  // freed on the compute stream only after it waited for the exchange
  cudaEvent_t done_ = nullptr;
  bool waited_ = false;
};

}  // namespace

cudaStream_t NcclCommunicator::a2a_stream() {
  if (a2a_stream_ == nullptr) {
    a2a_stream_ = cuda::new_high_priority_stream();
    CUDA_CHECK(cudaEventCreateWithFlags(&a2a_ready_, cudaEventDisableTiming));
  }
  return a2a_stream_;
}

std::unique_ptr<PendingCollective> NcclCommunicator::all_to_all_v_start(const Tensor& send,
                                                                        const std::vector<int64_t>& send_counts,
                                                                        Tensor& recv,
                                                                        const std::vector<int64_t>& recv_counts) {
  cudaStream_t stream = a2a_stream();
  // The rows were written by the compute stream: start after them.
  CUDA_CHECK(cudaEventRecord(a2a_ready_, cuda::compute_stream()));
  CUDA_CHECK(cudaStreamWaitEvent(stream, a2a_ready_, 0));
  auto pending = std::make_unique<NcclPendingAllToAll>(*this, send, recv);
  enqueue_all_to_all(send, send_counts, recv, recv_counts, stream);
  CUDA_CHECK(cudaEventRecord(pending->done(), stream));
  return pending;
}

// send[sum(send_counts), ...] -> recv[sum(recv_counts), ...] by rows, as grouped send/recv pairs
void NcclCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                                    const std::vector<int64_t>& recv_counts) {
  enqueue_all_to_all(send, send_counts, recv, recv_counts, cuda::compute_stream());
}

void NcclCommunicator::enqueue_all_to_all(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                                          const std::vector<int64_t>& recv_counts, cudaStream_t stream) {
  ops::OpScope timed(ops::OpKind::communication, send);
  detail::check_comm_tensor(send, device_, "all_to_all_v");
  detail::check_comm_tensor(recv, device_, "all_to_all_v");
  detail::check_all_to_all_args(send, send_counts, recv, recv_counts, size());
  size_t row_bytes = static_cast<size_t>(detail::row_numel(send)) * dtype_size(send.dtype());
  if (row_bytes == 0) return;
  MOE_CHECK(!overlaps(send, recv) || send.nbytes() == 0 || recv.nbytes() == 0,
            "all_to_all_v: send and recv overlap");
  count_all_to_all(detail::rows_sent_elsewhere(send_counts, rank()) * static_cast<int64_t>(row_bytes));
  size_t send_at = 0, recv_at = 0;
  NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size(); ++r) {
    size_t num_send = static_cast<size_t>(send_counts[r]) * row_bytes;
    size_t num_recv = static_cast<size_t>(recv_counts[r]) * row_bytes;
    if (num_send) NCCL_CHECK(ncclSend(byte_at(send, send_at), num_send, ncclUint8, r, nccl_, stream));
    if (num_recv) NCCL_CHECK(ncclRecv(byte_at(recv, recv_at), num_recv, ncclUint8, r, nccl_, stream));
    send_at += num_send;
    recv_at += num_recv;
  }
  NCCL_CHECK(ncclGroupEnd());
}

std::vector<int64_t> NcclCommunicator::all_to_all_counts(const std::vector<int64_t>& send_counts) {
  return host_.all_to_all_counts(send_counts);
}

void NcclCommunicator::send(const Tensor& x, int peer) {
  ops::OpScope timed(ops::OpKind::communication, x);
  detail::check_comm_tensor(x, device_, "send");
  check_peer(peer, "send", /*allow_self=*/false);
  NCCL_CHECK(ncclSend(x.data(), x.nbytes(), ncclUint8, peer, nccl_, cuda::compute_stream()));
}

void NcclCommunicator::recv(Tensor& x, int peer) {
  ops::OpScope timed(ops::OpKind::communication, x);
  detail::check_comm_tensor(x, device_, "recv");
  check_peer(peer, "recv", /*allow_self=*/false);
  NCCL_CHECK(ncclRecv(x.data(), x.nbytes(), ncclUint8, peer, nccl_, cuda::compute_stream()));
}

void NcclCommunicator::send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) {
  ops::OpScope timed(ops::OpKind::communication, send);
  detail::check_comm_tensor(send, device_, "send_recv");
  detail::check_comm_tensor(recv, device_, "send_recv");
  check_peer(send_peer, "send_recv", /*allow_self=*/true);
  check_peer(recv_peer, "send_recv", /*allow_self=*/true);
  MOE_CHECK(!overlaps(send, recv) || send.nbytes() == 0 || recv.nbytes() == 0, "send_recv: send and recv overlap");
  cudaStream_t stream = cuda::compute_stream();
  NCCL_CHECK(ncclGroupStart());
  NCCL_CHECK(ncclSend(send.data(), send.nbytes(), ncclUint8, send_peer, nccl_, stream));
  NCCL_CHECK(ncclRecv(recv.data(), recv.nbytes(), ncclUint8, recv_peer, nccl_, stream));
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::batch_send_recv(std::vector<P2pOp>& ops) {
  if (ops.empty()) return;
  ops::OpScope timed(ops::OpKind::communication, ops.front().tensor);
  cudaStream_t stream = cuda::compute_stream();
  for (const P2pOp& op : ops) {
    detail::check_comm_tensor(op.tensor, device_, "batch_send_recv");
    check_peer(op.peer, "batch_send_recv", /*allow_self=*/true);
  }
  NCCL_CHECK(ncclGroupStart());
  for (P2pOp& op : ops) {
    if (op.send) NCCL_CHECK(ncclSend(op.tensor.data(), op.tensor.nbytes(), ncclUint8, op.peer, nccl_, stream));
    else NCCL_CHECK(ncclRecv(op.tensor.data(), op.tensor.nbytes(), ncclUint8, op.peer, nccl_, stream));
  }
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::barrier() {
  cuda::wait_stream(cuda::compute_stream());
  host_.barrier();
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  MPI_Comm sub;
  MPI_CHECK(MPI_Comm_split(host_.mpi_comm(), color < 0 ? MPI_UNDEFINED : color, key, &sub));
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<NcclCommunicator>(sub, /*owns=*/true, device_);
}

}  // namespace moe
#endif  // MOE_WITH_CUDA

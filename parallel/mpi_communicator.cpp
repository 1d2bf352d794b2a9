// MPI collectives on CPU tensors. MPI counts are ints, so large buffers move in chunks (or
// as row-sized derived types for all-to-all) rather than overflowing a count.
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "parallel/mpi_check.h"

namespace moe {

namespace {

constexpr int64_t k_max_chunk_bytes = int64_t{1} << 30;
constexpr int k_p2p_tag = 7;

// The MPI type that reductions use for a dtype; bf16 has none (no reductions on CPU bf16).
MPI_Datatype reduce_type(DType dtype, const char* call) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::bf16: break;
  }
  MOE_FAIL(call, ": the MPI backend cannot reduce ", dtype_name(dtype),
           " tensors (CPU reductions take f32, f64, i32 or i64)");
}

// An opaque element type of the dtype's size, for moves that never look at the values.
MPI_Datatype element_type(DType dtype) {
  switch (dtype_size(dtype)) {
    case 2: return MPI_UINT16_T;
    case 4: return MPI_UINT32_T;
    case 8: return MPI_UINT64_T;
    default: MOE_FAIL("no MPI element type for ", dtype_name(dtype));
  }
}

int checked_count(int64_t count, const char* call) {
  MOE_CHECK(count <= INT_MAX, call, ": ", count, " elements exceed MPI's per-call count limit (", INT_MAX, ")");
  return static_cast<int>(count);
}

bool overlaps(const Tensor& a, const Tensor& b) {
  auto* a0 = static_cast<const char*>(a.data());
  auto* b0 = static_cast<const char*>(b.data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

bool is_mpi_running() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// Reduces `count` elements in place, chunked so each MPI call's count fits an int.
void all_reduce_in_place(void* data, int64_t count, DType dtype, MPI_Op op, MPI_Comm comm, const char* call) {
  MPI_Datatype type = reduce_type(dtype, call);
  int64_t chunk = k_max_chunk_bytes / static_cast<int64_t>(dtype_size(dtype));
  auto* bytes = static_cast<char*>(data);
  for (int64_t begin = 0; begin < count; begin += chunk) {
    int n = static_cast<int>(std::min(chunk, count - begin));
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, bytes + begin * dtype_size(dtype), n, type, op, comm));
  }
}

template <typename T>
void scale_host(Tensor& x, double alpha) {
  T* data = x.data_as<T>();
  T factor = static_cast<T>(alpha);
  for (int64_t i = 0; i < x.numel(); ++i) data[i] *= factor;
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owns) : comm_(comm), owns_(owns) {
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  if (owns_ && is_mpi_running()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::check_peer(int peer, const char* call, bool allow_self) const {
  MOE_CHECK(peer >= 0 && peer < size_, call, ": peer ", peer, " is outside the group of ", size_, " ranks");
  MOE_CHECK(allow_self || peer != rank_, call, ": peer ", peer, " is this rank");
}

// x[n] <- sum over ranks of x[n]
void MpiCommunicator::all_reduce_sum(Tensor& x) {
  detail::check_comm_tensor(x, device(), "all_reduce_sum");
  count_all_reduce(static_cast<int64_t>(x.nbytes()));
  all_reduce_in_place(x.data(), x.numel(), x.dtype(), MPI_SUM, comm_, "all_reduce_sum");
}

// x[n] <- mean over ranks of x[n]
void MpiCommunicator::all_reduce_avg(Tensor& x) {
  detail::check_comm_tensor(x, device(), "all_reduce_avg");
  MOE_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64,
            "all_reduce_avg: the MPI backend averages f32 or f64 tensors, got ", dtype_name(x.dtype()));
  count_all_reduce(static_cast<int64_t>(x.nbytes()));
  all_reduce_in_place(x.data(), x.numel(), x.dtype(), MPI_SUM, comm_, "all_reduce_avg");
  if (x.dtype() == DType::f32) scale_host<float>(x, 1.0 / size_);
  else scale_host<double>(x, 1.0 / size_);
}

void MpiCommunicator::all_reduce_sum(std::vector<double>& values) {
  all_reduce_in_place(values.data(), static_cast<int64_t>(values.size()), DType::f64, MPI_SUM, comm_,
                      "all_reduce_sum");
}

void MpiCommunicator::all_reduce_max(std::vector<double>& values) {
  all_reduce_in_place(values.data(), static_cast<int64_t>(values.size()), DType::f64, MPI_MAX, comm_,
                      "all_reduce_max");
}

void MpiCommunicator::broadcast(Tensor& x, int root) {
  detail::check_comm_tensor(x, device(), "broadcast");
  check_peer(root, "broadcast", /*allow_self=*/true);
  auto* bytes = static_cast<char*>(x.data());
  int64_t total = static_cast<int64_t>(x.nbytes());
  for (int64_t begin = 0; begin < total; begin += k_max_chunk_bytes) {
    int n = static_cast<int>(std::min(k_max_chunk_bytes, total - begin));
    MPI_CHECK(MPI_Bcast(bytes + begin, n, MPI_BYTE, root, comm_));
  }
}

// in[n] -> out[size*n]; an `in` that is out's own slot [rank*n, (rank+1)*n) is gathered in place.
void MpiCommunicator::all_gather(const Tensor& in, Tensor& out) {
  detail::check_comm_tensor(in, device(), "all_gather");
  detail::check_comm_tensor(out, device(), "all_gather");
  detail::check_same_dtype(in, out, "all_gather");
  detail::check_numel_ratio(in, out, size_, "all_gather");
  int count = checked_count(in.numel(), "all_gather");
  MPI_Datatype type = element_type(in.dtype());
  const char* own_slot = static_cast<const char*>(out.data()) + static_cast<size_t>(rank_) * in.nbytes();
  if (in.data() == own_slot) {
    MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, out.data(), count, type, comm_));
    return;
  }
  MOE_CHECK(!overlaps(in, out), "all_gather: in overlaps out other than at this rank's slot");
  MPI_CHECK(MPI_Allgather(in.data(), count, type, out.data(), count, type, comm_));
}

// in[size*n] -> out[n] = sum over ranks of in[rank*n, (rank+1)*n)
void MpiCommunicator::reduce_scatter_sum(const Tensor& in, Tensor& out) {
  detail::check_comm_tensor(in, device(), "reduce_scatter_sum");
  detail::check_comm_tensor(out, device(), "reduce_scatter_sum");
  detail::check_same_dtype(in, out, "reduce_scatter_sum");
  detail::check_numel_ratio(out, in, size_, "reduce_scatter_sum");
  int count = checked_count(out.numel(), "reduce_scatter_sum");
  MPI_Datatype type = reduce_type(in.dtype(), "reduce_scatter_sum");
  count_reduce_scatter(static_cast<int64_t>(in.nbytes()), static_cast<int64_t>(out.nbytes()));
  if (!overlaps(in, out)) {
    MPI_CHECK(MPI_Reduce_scatter_block(in.data(), out.data(), count, type, MPI_SUM, comm_));
    return;
  }
  // MPI forbids aliasing here (ZeRO reduces into its own slot of the full buffer): go via a temporary.
  Tensor result = Tensor::empty(out.shape(), out.dtype());
  MPI_CHECK(MPI_Reduce_scatter_block(in.data(), result.data(), count, type, MPI_SUM, comm_));
  std::memcpy(out.data(), result.data(), out.nbytes());
}

// The arguments of one MPI_Alltoallv: counts and offsets in rows of a derived row type, so
// only row counts must fit an int. Frees the type on destruction.
struct MpiCommunicator::AllToAllPlan {
  MPI_Datatype row_type = MPI_DATATYPE_NULL;
  std::vector<int> num_send, num_recv, send_offsets, recv_offsets;
  AllToAllPlan() = default;
  AllToAllPlan(const AllToAllPlan&) = delete;
  AllToAllPlan& operator=(const AllToAllPlan&) = delete;
  ~AllToAllPlan() {
    if (row_type != MPI_DATATYPE_NULL && is_mpi_running()) MPI_Type_free(&row_type);
  }
};

// Checks the arguments and builds the plan; nullptr when rows have zero width (nothing moves).
std::unique_ptr<MpiCommunicator::AllToAllPlan> MpiCommunicator::plan_all_to_all(
    const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
    const std::vector<int64_t>& recv_counts) {
  detail::check_comm_tensor(send, device(), "all_to_all_v");
  detail::check_comm_tensor(recv, device(), "all_to_all_v");
  detail::check_all_to_all_args(send, send_counts, recv, recv_counts, size_);
  int64_t row_bytes = detail::row_numel(send) * static_cast<int64_t>(dtype_size(send.dtype()));
  if (row_bytes == 0) return nullptr;  // rows of zero width: nothing to move on any rank
  MOE_CHECK(!overlaps(send, recv) || send.nbytes() == 0 || recv.nbytes() == 0,
            "all_to_all_v: send and recv overlap");
  count_all_to_all(detail::rows_sent_elsewhere(send_counts, rank_) * row_bytes);
  auto plan = std::make_unique<AllToAllPlan>();
  MPI_CHECK(MPI_Type_contiguous(checked_count(row_bytes, "all_to_all_v"), MPI_BYTE, &plan->row_type));
  MPI_CHECK(MPI_Type_commit(&plan->row_type));
  plan->num_send.resize(size_);
  plan->num_recv.resize(size_);
  plan->send_offsets.resize(size_);
  plan->recv_offsets.resize(size_);
  int64_t send_at = 0, recv_at = 0;
  for (int r = 0; r < size_; ++r) {
    plan->num_send[r] = checked_count(send_counts[r], "all_to_all_v");
    plan->num_recv[r] = checked_count(recv_counts[r], "all_to_all_v");
    plan->send_offsets[r] = checked_count(send_at, "all_to_all_v");
    plan->recv_offsets[r] = checked_count(recv_at, "all_to_all_v");
    send_at += send_counts[r];
    recv_at += recv_counts[r];
  }
  return plan;
}

// in[sum(counts)] -> out[counts[rank]] = sum over ranks of their in part [sum(counts[:rank]), +counts[rank]):
// one non-blocking reduce of each non-empty part to its owner, all posted, then awaited. A rank
// sends each part but its own once (a tree reduce), as a reduce-scatter does, and the sums are
// made in the reduce's fixed order whatever the parts' sizes.
void MpiCommunicator::reduce_scatter_v_sum(const Tensor& in, const std::vector<int64_t>& counts, Tensor& out) {
  detail::check_comm_tensor(in, device(), "reduce_scatter_v_sum");
  detail::check_comm_tensor(out, device(), "reduce_scatter_v_sum");
  const bool in_place = detail::check_reduce_scatter_v_args(in, counts, out, size_, rank_);
  MPI_Datatype type = reduce_type(in.dtype(), "reduce_scatter_v_sum");
  count_reduce_scatter(static_cast<int64_t>(in.nbytes()), static_cast<int64_t>(out.nbytes()));
  const size_t elem = dtype_size(in.dtype());
  auto* base = static_cast<char*>(const_cast<void*>(in.data()));
  std::vector<MPI_Request> requests;
  int64_t at = 0;
  for (int r = 0; r < size_; ++r) {
    const int64_t n = counts[static_cast<size_t>(r)];
    char* part = base + static_cast<size_t>(at) * elem;
    at += n;
    if (n == 0) continue;
    const int count = checked_count(n, "reduce_scatter_v_sum");
    requests.emplace_back();
    if (r != rank_) {
      MPI_CHECK(MPI_Ireduce(part, nullptr, count, type, MPI_SUM, r, comm_, &requests.back()));
    } else if (in_place) {
      MPI_CHECK(MPI_Ireduce(MPI_IN_PLACE, part, count, type, MPI_SUM, r, comm_, &requests.back()));
    } else {
      MPI_CHECK(MPI_Ireduce(part, out.data(), count, type, MPI_SUM, r, comm_, &requests.back()));
    }
  }
  MPI_CHECK(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
}

// send[sum(send_counts), ...] -> recv[sum(recv_counts), ...] by rows
void MpiCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                                   const std::vector<int64_t>& recv_counts) {
  auto plan = plan_all_to_all(send, send_counts, recv, recv_counts);
  if (!plan) return;
  MPI_CHECK(MPI_Alltoallv(send.data(), plan->num_send.data(), plan->send_offsets.data(), plan->row_type, recv.data(),
                          plan->num_recv.data(), plan->recv_offsets.data(), plan->row_type, comm_));
}

namespace {

// An MPI_Ialltoallv in flight: MPI reads the counts and the buffers until it completes, so the
// handle owns the plan and holds the tensors.
class MpiPendingAllToAll final : public PendingCollective {
 public:
  MpiPendingAllToAll(Communicator& comm, std::unique_ptr<MpiCommunicator::AllToAllPlan> plan, Tensor send, Tensor recv)
      : counter_(comm), plan_(std::move(plan)), send_(std::move(send)), recv_(std::move(recv)) {}
  ~MpiPendingAllToAll() override {
    if (request_ != MPI_REQUEST_NULL && is_mpi_running()) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  MPI_Request* request() { return &request_; }
  void wait() override {
    if (request_ != MPI_REQUEST_NULL) MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE));
    counter_.done();
  }

 private:
  PendingCounter counter_;
  std::unique_ptr<MpiCommunicator::AllToAllPlan> plan_;
  Tensor send_, recv_;
  MPI_Request request_ = MPI_REQUEST_NULL;
};

}  // namespace

std::unique_ptr<PendingCollective> MpiCommunicator::all_to_all_v_start(const Tensor& send,
                                                                       const std::vector<int64_t>& send_counts,
                                                                       Tensor& recv,
                                                                       const std::vector<int64_t>& recv_counts) {
  auto plan = plan_all_to_all(send, send_counts, recv, recv_counts);
  const bool moves = plan != nullptr;
  AllToAllPlan* p = plan.get();
  auto pending = std::make_unique<MpiPendingAllToAll>(*this, std::move(plan), send, recv);
  if (moves) {
    MPI_CHECK(MPI_Ialltoallv(send.data(), p->num_send.data(), p->send_offsets.data(), p->row_type, recv.data(),
                             p->num_recv.data(), p->recv_offsets.data(), p->row_type, comm_, pending->request()));
  }
  return pending;
}

std::vector<int64_t> MpiCommunicator::all_to_all_counts(const std::vector<int64_t>& send_counts) {
  MOE_CHECK(static_cast<int>(send_counts.size()) == size_, "all_to_all_counts: need one count per rank (", size_,
            "), got ", send_counts.size());
  std::vector<int64_t> recv_counts(size_);
  MPI_CHECK(MPI_Alltoall(send_counts.data(), 1, MPI_INT64_T, recv_counts.data(), 1, MPI_INT64_T, comm_));
  return recv_counts;
}

void MpiCommunicator::send(const Tensor& x, int peer) {
  detail::check_comm_tensor(x, device(), "send");
  check_peer(peer, "send", /*allow_self=*/false);
  auto* bytes = static_cast<const char*>(x.data());
  int64_t total = static_cast<int64_t>(x.nbytes());
  int64_t begin = 0;
  do {  // at least one message, so an empty tensor still pairs with its recv
    int n = static_cast<int>(std::min(k_max_chunk_bytes, total - begin));
    MPI_CHECK(MPI_Send(bytes + begin, n, MPI_BYTE, peer, k_p2p_tag, comm_));
    begin += n;
  } while (begin < total);
}

void MpiCommunicator::recv(Tensor& x, int peer) {
  detail::check_comm_tensor(x, device(), "recv");
  check_peer(peer, "recv", /*allow_self=*/false);
  auto* bytes = static_cast<char*>(x.data());
  int64_t total = static_cast<int64_t>(x.nbytes());
  int64_t begin = 0;
  do {
    int n = static_cast<int>(std::min(k_max_chunk_bytes, total - begin));
    MPI_Status status;
    MPI_CHECK(MPI_Recv(bytes + begin, n, MPI_BYTE, peer, k_p2p_tag, comm_, &status));
    int got = 0;
    MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &got));
    MOE_CHECK(got == n, "recv: expected ", total, " bytes from rank ", peer, ", the message was shorter");
    begin += n;
  } while (begin < total);
}

void MpiCommunicator::send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) {
  MOE_CHECK(!overlaps(send, recv) || send.nbytes() == 0 || recv.nbytes() == 0, "send_recv: send and recv overlap");
  std::vector<P2pOp> ops{{recv, recv_peer, false}, {send, send_peer, true}};
  post_and_wait(ops, "send_recv");
}

void MpiCommunicator::batch_send_recv(std::vector<P2pOp>& ops) { post_and_wait(ops, "batch_send_recv"); }

void MpiCommunicator::post_and_wait(std::vector<P2pOp>& ops, const char* what) {
  // Post every chunk of every transfer before waiting, so no ordering of peers can deadlock.
  std::vector<MPI_Request> requests;
  for (P2pOp& op : ops) {
    detail::check_comm_tensor(op.tensor, device(), what);
    check_peer(op.peer, what, /*allow_self=*/true);
    auto* bytes = static_cast<char*>(op.tensor.data());
    const auto total = static_cast<int64_t>(op.tensor.nbytes());
    int64_t begin = 0;
    do {
      int n = static_cast<int>(std::min(k_max_chunk_bytes, total - begin));
      requests.emplace_back();
      if (op.send) MPI_CHECK(MPI_Isend(bytes + begin, n, MPI_BYTE, op.peer, k_p2p_tag, comm_, &requests.back()));
      else MPI_CHECK(MPI_Irecv(bytes + begin, n, MPI_BYTE, op.peer, k_p2p_tag, comm_, &requests.back()));
      begin += n;
    } while (begin < total);
  }
  MPI_CHECK(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
}

void MpiCommunicator::barrier() { MPI_CHECK(MPI_Barrier(comm_)); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm sub;
  MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub));
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(sub, /*owns=*/true);
}

}  // namespace moe

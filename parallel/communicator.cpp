// The world-communicator factory (MPI for CPU tensors, NCCL for CUDA tensors) and the
// argument checks every backend shares, so both report a misuse with the same message.
#include "parallel/communicator.h"

#include <numeric>

#include "parallel/mpi_check.h"
#include "parallel/mpi_communicator.h"
#if MOE_WITH_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace moe {

std::unique_ptr<Communicator> make_world_communicator(Device device) {
  int initialized = 0, finalized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  MPI_CHECK(MPI_Finalized(&finalized));
  MOE_CHECK(initialized && !finalized, "make_world_communicator: MPI is not running (create a moe::MpiEnv first)");
  if (!device.is_cuda()) return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, /*owns=*/false);
#if MOE_WITH_CUDA
  return std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, /*owns=*/false, device);
#else
  MOE_FAIL("make_world_communicator: ", device.str(), " needs NCCL, but this build has no CUDA support");
#endif
}

namespace {

// A collective that completed when it started.
class CompletedCollective final : public PendingCollective {
 public:
  void wait() override {}
};

}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_to_all_v_start(const Tensor& send,
                                                                    const std::vector<int64_t>& send_counts,
                                                                    Tensor& recv,
                                                                    const std::vector<int64_t>& recv_counts) {
  all_to_all_v(send, send_counts, recv, recv_counts);
  return std::make_unique<CompletedCollective>();
}

void Communicator::count_all_reduce(int64_t bytes) {
  const int n = size();
  if (n > 1) traffic_.reduction_bytes += 2 * (n - 1) * bytes / n;
}

void Communicator::count_reduce_scatter(int64_t total_bytes, int64_t own_bytes) {
  if (size() > 1) traffic_.reduction_bytes += total_bytes - own_bytes;
}

void Communicator::count_all_to_all(int64_t bytes_sent_elsewhere) { traffic_.all_to_all_bytes += bytes_sent_elsewhere; }

namespace detail {

bool check_reduce_scatter_v_args(const Tensor& in, const std::vector<int64_t>& counts, const Tensor& out, int size,
                                 int rank) {
  check_same_dtype(in, out, "reduce_scatter_v_sum");
  MOE_CHECK(static_cast<int>(counts.size()) == size, "reduce_scatter_v_sum: need one count per rank (", size,
            "), got ", counts.size());
  int64_t total = 0;
  for (int r = 0; r < size; ++r) {
    MOE_CHECK(counts[r] >= 0, "reduce_scatter_v_sum: negative count ", counts[r], " for rank ", r);
    total += counts[r];
  }
  MOE_CHECK(total == in.numel(), "reduce_scatter_v_sum: counts sum to ", total, " elements but in has ", in.numel());
  MOE_CHECK(out.numel() == counts[rank], "reduce_scatter_v_sum: out has ", out.numel(), " elements, this rank's count is ",
            counts[rank]);
  if (in.nbytes() == 0 || out.nbytes() == 0) return false;
  auto* i0 = static_cast<const char*>(in.data());
  auto* o0 = static_cast<const char*>(out.data());
  const int64_t begin = std::accumulate(counts.begin(), counts.begin() + rank, int64_t{0});
  if (o0 == i0 + begin * static_cast<int64_t>(dtype_size(in.dtype()))) return true;
  MOE_CHECK(!(i0 < o0 + out.nbytes() && o0 < i0 + in.nbytes()),
            "reduce_scatter_v_sum: out overlaps in other than at this rank's part");
  return false;
}

int64_t rows_sent_elsewhere(const std::vector<int64_t>& send_counts, int rank) {
  int64_t rows = 0;
  for (size_t r = 0; r < send_counts.size(); ++r) rows += static_cast<int>(r) == rank ? 0 : send_counts[r];
  return rows;
}

void check_comm_tensor(const Tensor& x, Device device, const char* call) {
  MOE_CHECK(x.defined(), call, ": tensor is undefined");
  MOE_CHECK(x.device() == device, call, ": tensor is on ", x.device().str(), " but this communicator moves ",
            device.str(), " tensors");
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* call) {
  MOE_CHECK(a.dtype() == b.dtype(), call, ": dtypes differ (", dtype_name(a.dtype()), " vs ",
            dtype_name(b.dtype()), ")");
}

void check_numel_ratio(const Tensor& small, const Tensor& large, int factor, const char* call) {
  MOE_CHECK(large.numel() == small.numel() * factor, call, ": expected ", factor, " x ", small.numel(),
            " elements in the group-sized tensor, got ", large.numel(), " (shapes ", shape_str(small.shape()),
            " and ", shape_str(large.shape()), ")");
}

int64_t row_numel(const Tensor& t) { return shape_numel(Shape(t.shape().begin() + 1, t.shape().end())); }

void check_all_to_all_args(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                           const std::vector<int64_t>& recv_counts, int size) {
  MOE_CHECK(send.ndim() >= 1 && recv.ndim() >= 1, "all_to_all_v: send and recv need a row dimension, got ",
            shape_str(send.shape()), " and ", shape_str(recv.shape()));
  check_same_dtype(send, recv, "all_to_all_v");
  MOE_CHECK(Shape(send.shape().begin() + 1, send.shape().end()) ==
                Shape(recv.shape().begin() + 1, recv.shape().end()),
            "all_to_all_v: row shapes differ (send ", shape_str(send.shape()), ", recv ", shape_str(recv.shape()), ")");
  MOE_CHECK(static_cast<int>(send_counts.size()) == size && static_cast<int>(recv_counts.size()) == size,
            "all_to_all_v: need one count per rank (", size, "), got ", send_counts.size(), " send and ",
            recv_counts.size(), " recv counts");
  for (int r = 0; r < size; ++r) {
    MOE_CHECK(send_counts[r] >= 0 && recv_counts[r] >= 0, "all_to_all_v: negative count for rank ", r);
  }
  int64_t num_send = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  int64_t num_recv = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  MOE_CHECK(num_send == send.size(0), "all_to_all_v: send counts sum to ", num_send, " rows but send has ",
            send.size(0), " rows");
  MOE_CHECK(num_recv == recv.size(0), "all_to_all_v: recv counts sum to ", num_recv, " rows but recv has ",
            recv.size(0), " rows");
}

}  // namespace detail

}  // namespace moe

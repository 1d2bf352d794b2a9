// Data-parallel gradient averaging (run under mpirun): every rank ends with the mean of all
// ranks' gradients, bit-identical across ranks, in the number of buckets the size implies.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "parallel/grad_sync.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

// Forwards to a real communicator and records the size of every averaged bucket.
class RecordingCommunicator final : public Communicator {
 public:
  explicit RecordingCommunicator(Communicator& inner) : inner_(inner) {}
  std::vector<int64_t> bucket_sizes;
  std::vector<std::vector<int64_t>> part_counts;  // of every reduce_scatter_v_sum

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  Device device() const override { return inner_.device(); }
  void all_reduce_sum(Tensor& x) override { inner_.all_reduce_sum(x); }
  void all_reduce_avg(Tensor& x) override {
    bucket_sizes.push_back(x.numel());
    inner_.all_reduce_avg(x);
  }
  void all_reduce_sum(std::vector<double>& v) override { inner_.all_reduce_sum(v); }
  void all_reduce_max(std::vector<double>& v) override { inner_.all_reduce_max(v); }
  void broadcast(Tensor& x, int root) override { inner_.broadcast(x, root); }
  void all_gather(const Tensor& in, Tensor& out) override { inner_.all_gather(in, out); }
  void reduce_scatter_sum(const Tensor& in, Tensor& out) override { inner_.reduce_scatter_sum(in, out); }
  void reduce_scatter_v_sum(const Tensor& in, const std::vector<int64_t>& counts, Tensor& out) override {
    part_counts.push_back(counts);
    inner_.reduce_scatter_v_sum(in, counts, out);
  }
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                    const std::vector<int64_t>& recv_counts) override {
    inner_.all_to_all_v(send, send_counts, recv, recv_counts);
  }
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& c) override {
    return inner_.all_to_all_counts(c);
  }
  void send(const Tensor& x, int peer) override { inner_.send(x, peer); }
  void recv(Tensor& x, int peer) override { inner_.recv(x, peer); }
  void send_recv(const Tensor& s, int sp, Tensor& r, int rp) override { inner_.send_recv(s, sp, r, rp); }
  void batch_send_recv(std::vector<P2pOp>& ops) override { inner_.batch_send_recv(ops); }
  void barrier() override { inner_.barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) override { return inner_.split(color, key); }

 private:
  Communicator& inner_;
};

// The mean over ranks of every rank's gradients (seed per rank), computed in double.
std::vector<double> expected_mean(int64_t n, int size) {
  std::vector<double> mean(static_cast<size_t>(n), 0.0);
  for (int q = 0; q < size; ++q) {
    auto v = test::random_values(n, 1000 + q);
    for (int64_t i = 0; i < n; ++i) mean[i] += v[i] / size;
  }
  return mean;
}

void check_average(Communicator& world, const Shape& shape, DType dtype, size_t bucket_bytes,
                   int64_t expected_buckets) {
  INFO(dtype_name(dtype) << " shape " << shape_str(shape) << " bucket " << bucket_bytes << " bytes");
  RecordingCommunicator comm(world);
  int64_t n = shape_numel(shape);
  Tensor grads = test::random_tensor(shape, dtype, 1000 + comm.rank());
  average_gradients(comm, grads, bucket_bytes);
  REQUIRE(grads.shape() == shape);
  auto tol = test::tolerance_for(dtype);
  test::require_close(grads.to_vector<double>(), expected_mean(n, comm.size()), tol.atol, tol.rtol, "mean");

  if (comm.size() > 1) {
    REQUIRE(static_cast<int64_t>(comm.bucket_sizes.size()) == expected_buckets);
    int64_t bucket_numel = std::max<int64_t>(1, bucket_bytes / dtype_size(dtype));
    for (size_t b = 0; b + 1 < comm.bucket_sizes.size(); ++b) REQUIRE(comm.bucket_sizes[b] == bucket_numel);
    REQUIRE(std::accumulate(comm.bucket_sizes.begin(), comm.bucket_sizes.end(), int64_t{0}) == n);
  } else {
    REQUIRE(comm.bucket_sizes.empty());
  }
  // Every rank holds the same bits, so replicas stay in lockstep.
  Tensor all = Tensor::zeros({comm.size() * n}, dtype);
  world.all_gather(grads.view({n}), all);
  for (int q = 0; q < comm.size(); ++q) {
    REQUIRE(std::memcmp(all.rows(q * n, (q + 1) * n).data(), grads.data(), grads.nbytes()) == 0);
  }
}

TEST_CASE("average_gradients averages over ranks in buckets", "[parallel]") {
  auto world = make_world_communicator(Device::cpu());
  // 1000 f32 in 64-byte buckets: 62 full buckets of 16 and one of 8.
  check_average(*world, {1000}, DType::f32, 64, 63);
  // f64 [10, 7] in 24-byte buckets of 3: 23 full and one of 1.
  check_average(*world, {10, 7}, DType::f64, 24, 24);
  // A bucket larger than the buffer: one call.
  check_average(*world, {4, 5, 6}, DType::f32, k_default_bucket_bytes, 1);
  // A bucket smaller than one element still moves one element per call.
  check_average(*world, {5}, DType::f64, 1, 5);
}

TEST_CASE("average_gradients rejects non-floating gradients", "[parallel]") {
  auto world = make_world_communicator(Device::cpu());
  Tensor ids = Tensor::zeros({3}, DType::i32);
  REQUIRE_THROWS_WITH(average_gradients(*world, ids), Contains("gradients must be floating point"));
  Tensor grads = Tensor::zeros({3}, DType::f32);
  REQUIRE_THROWS_WITH(average_gradients(*world, grads, 0), Contains("bucket size must be positive"));
}

TEST_CASE("reduce_scatter_sharded leaves each rank the sum of its shard's part, bucket by bucket", "[parallel]") {
  auto world = make_world_communicator(Device::cpu());
  RecordingCommunicator comm(*world);
  const int size = comm.size(), me = comm.rank();
  // A buffer of 23 elements in shards of ceil(23/size), the last ones short or empty; the
  // reduced range [5, 20) crosses the borders; 4-element buckets (16 bytes of f32).
  const int64_t numel = 23, shard = (numel + size - 1) / size, first = 5, last = 20;
  std::vector<int64_t> borders(static_cast<size_t>(size) + 1);
  for (int r = 0; r <= size; ++r) borders[static_cast<size_t>(r)] = std::min<int64_t>(r * shard, numel);
  auto values = [&](int q) {
    const std::vector<double> v = test::random_values(last - first, 500 + static_cast<uint64_t>(q));
    return std::vector<float>(v.begin(), v.end());
  };
  Tensor grads = Tensor::from_vector(values(me), {last - first}, DType::f32);
  reduce_scatter_sharded(comm, grads, first, borders, 16);
  REQUIRE(comm.part_counts.size() == 4);  // ceil(15 / 4) buckets
  for (const auto& counts : comm.part_counts) {
    REQUIRE(counts.size() == static_cast<size_t>(size));
    for (int64_t c : counts) REQUIRE(c >= 0);
  }
  const std::vector<float> got = grads.to_vector<float>();
  for (int64_t i = std::max(first, borders[me]); i < std::min(last, borders[me + 1]); ++i) {
    double sum = 0;
    for (int q = 0; q < size; ++q) sum += values(q)[static_cast<size_t>(i - first)];
    REQUIRE(got[static_cast<size_t>(i - first)] == Approx(sum).epsilon(1e-5).margin(1e-6));  // f32 sums
  }
  REQUIRE_THROWS_WITH(reduce_scatter_sharded(comm, grads, first, std::vector<int64_t>(2, 0), 16),
                      Contains("reduce_scatter_sharded: need"));
  if (size > 1) {
    std::vector<int64_t> short_borders = borders;
    short_borders.back() = first + 1;
    REQUIRE_THROWS_WITH(reduce_scatter_sharded(comm, grads, first, short_borders, 16),
                        Contains("lie outside the shards"));
  }
}

}  // namespace
}  // namespace moe

// The update stream (parallel.overlap_update) on a GPU: work queued between begin() and end() runs
// beside the main stream; the main stream waits for a named mark only where it asks (wait), for
// everything at join(), and by itself before a read back to the host. Each case queues an update
// of tens of milliseconds, so a missing wait shows as values read before the update finished.
#include <catch2/catch.hpp>

#include "kernels/cuda/runtime.h"
#include "src/ops/ops.h"
#include "src/tensor/update_stream.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

constexpr int64_t k_n = int64_t{1} << 24;  // 64 MB of f32 per tensor
constexpr int k_adds = 300;                // x += 1, 300 times: ~40 ms of update

Tensor ones(int64_t n) { return Tensor::from_vector(std::vector<float>(static_cast<size_t>(n), 1.0f), {n}, DType::f32, gpu()); }

// Queues x += 1, k_adds times, on the current stream.
void long_update(Tensor& x, const Tensor& one) {
  for (int i = 0; i < k_adds; ++i) ops::add(x, one, x);
}

// Every element of t equals v.
void require_all(const Tensor& t, double v) {
  const std::vector<float> values = t.to(Device::cpu()).to_vector<float>();
  size_t off = 0;
  for (float x : values) off += x == static_cast<float>(v) ? 0 : 1;
  REQUIRE(off == 0);
}

TEST_CASE("the main stream waits for a marked update where it asks", "[cuda][update_stream]") {
  Tensor one = ones(k_n), zero = Tensor::zeros({k_n}, DType::f32, gpu());
  Tensor a = Tensor::zeros({k_n}, DType::f32, gpu()), b = Tensor::zeros({k_n}, DType::f32, gpu());
  cuda_synchronize();
  UpdateStream s(gpu(), true);
  REQUIRE(s.active());
  s.begin();
  long_update(a, one);
  s.mark("a");
  long_update(b, one);
  s.mark("b");
  s.end();
  // A kernel on the main stream reads a after its mark: all of the update of a.
  s.wait("a");
  Tensor a_seen = Tensor::empty({k_n}, DType::f32, gpu());
  ops::add(a, zero, a_seen);
  s.wait("b");
  Tensor b_seen = Tensor::empty({k_n}, DType::f32, gpu());
  ops::add(b, zero, b_seen);
  require_all(a_seen, k_adds);
  require_all(b_seen, k_adds);
  s.wait("never marked");  // nothing to wait for
}

// The update yields to the step: the main and side streams (and the NCCL communicator's, made by
// new_high_priority_stream) have the device's highest priority, the update stream its lowest.
TEST_CASE("the update stream has the lowest priority, the main and side streams the highest",
          "[cuda][update_stream]") {
  int lowest = 0, highest = 0;
  REQUIRE(cudaDeviceGetStreamPriorityRange(&lowest, &highest) == cudaSuccess);
  REQUIRE(highest < lowest);  // a GPU with priorities: numerically lower is higher
  auto priority_of = [](cudaStream_t stream) {
    int p = 0;
    return cudaStreamGetPriority(stream, &p) == cudaSuccess ? p : 1000;
  };
  const int main_priority = priority_of(cuda::compute_stream());
  cuda::side_stream_begin();  // each scope ends before its assertion, so a failure leaves the runtime clean
  const int side_priority = priority_of(cuda::compute_stream());
  cuda::side_stream_end();
  cuda::side_stream_join();
  cuda::update_stream_begin();
  const int update_priority = priority_of(cuda::compute_stream());
  cuda::update_stream_end();
  cuda::update_stream_join();
  cudaStream_t nccl_like = cuda::new_high_priority_stream();
  const int new_stream_priority = priority_of(nccl_like);
  REQUIRE(cudaStreamDestroy(nccl_like) == cudaSuccess);
  REQUIRE(main_priority == highest);
  REQUIRE(side_priority == highest);
  REQUIRE(update_priority == lowest);
  REQUIRE(new_stream_priority == highest);  // the NCCL communicator's streams
}

TEST_CASE("a read back to the host sees the update finished", "[cuda][update_stream]") {
  Tensor one = ones(k_n);
  Tensor a = Tensor::zeros({k_n}, DType::f32, gpu());
  cuda_synchronize();
  UpdateStream s(gpu(), true);
  s.begin();
  long_update(a, one);
  s.mark("a");
  s.end();
  require_all(a, k_adds);  // no wait, no join: the copy to the host joins by itself
}

TEST_CASE("join orders all the update before later main-stream work", "[cuda][update_stream]") {
  Tensor one = ones(k_n), zero = Tensor::zeros({k_n}, DType::f32, gpu());
  Tensor a = Tensor::zeros({k_n}, DType::f32, gpu());
  cuda_synchronize();
  UpdateStream s(gpu(), true);
  for (int round = 1; round <= 2; ++round) {  // marks of a joined update are not waited for again
    s.begin();
    long_update(a, one);
    s.end();
    s.join();
    Tensor seen = Tensor::empty({k_n}, DType::f32, gpu());
    ops::add(a, zero, seen);
    require_all(seen, round * k_adds);
  }
  REQUIRE_THROWS_WITH(s.mark("outside"), Catch::Contains("outside begin()"));
  s.begin();
  REQUIRE_THROWS_WITH(s.begin(), Catch::Contains("begin() twice"));
  REQUIRE_THROWS_WITH(s.join(), Catch::Contains("join() before end()"));
  s.end();
}

TEST_CASE("an update stream on the CPU or not enabled does nothing", "[cuda][update_stream]") {
  UpdateStream cpu(Device::cpu(), true), off(gpu(), false);
  REQUIRE_FALSE(cpu.active());
  REQUIRE_FALSE(off.active());
  Tensor one = ones(4), a = Tensor::zeros({4}, DType::f32, gpu());
  off.begin();
  ops::add(a, one, a);
  off.mark("a");
  off.end();
  off.wait("a");
  off.join();
  require_all(a, 1);
}

}  // namespace
}  // namespace moe::test

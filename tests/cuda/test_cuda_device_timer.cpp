// DeviceIntervals on a GPU: the marks are events on the compute stream, so timing a step costs
// the host no wait (queuing ten long matmuls between marks returns long before they run), the
// busy time is the matmuls' device time and the wall spans the step, read once at the end. The op
// profile (`--breakdown`) likewise: device times from its events, host times from the clock.
#include <catch2/catch.hpp>

#include <chrono>

#include "src/ops/op_profile.h"
#include "src/ops/ops.h"
#include "src/tensor/device_timer.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

TEST_CASE("DeviceIntervals times queued GPU work without waiting for it", "[cuda][timer]") {
  const int64_t n = 8192;
  Tensor a = Tensor::zeros({n, n}, DType::bf16, gpu()), b = Tensor::zeros({n, n}, DType::bf16, gpu());
  Tensor c = Tensor::empty({n, n}, DType::bf16, gpu());
  ops::matmul(a, false, b, false, c);  // warm-up (library handles, kernels)
  cuda_synchronize();
  DeviceIntervals t(gpu());
  for (int step = 0; step < 2; ++step) {
    t.reset();
    const auto host_start = std::chrono::steady_clock::now();
    t.start();
    for (int i = 0; i < 10; ++i) {
      t.begin();
      ops::matmul(a, false, b, false, c);
      t.end();
    }
    t.stop();
    const double host_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_start).count();
    const double busy = t.busy_ms(), wall = t.wall_ms();
    INFO("step " << step << " host " << host_ms << " ms, busy " << busy << " ms, wall " << wall << " ms");
    CHECK(busy > 0);
    CHECK(busy <= wall * 1.001);
    CHECK(host_ms < busy);  // 11 TFLOP queued: the host did not wait for them
  }
}

TEST_CASE("op profile on a GPU: device time from events, host time from the clock", "[cuda][timer]") {
  const int64_t n = 8192;
  Tensor a = Tensor::zeros({n, n}, DType::bf16, gpu()), b = Tensor::zeros({n, n}, DType::bf16, gpu());
  Tensor c = Tensor::empty({n, n}, DType::bf16, gpu());
  ops::matmul(a, false, b, false, c);  // warm-up
  cuda_synchronize();
  ops::OpProfile profile;
  ops::set_op_profile(&profile);
  for (int i = 0; i < 10; ++i) ops::matmul(a, false, b, false, c);
  ops::set_op_profile(nullptr);
  const double device_ms = profile.millis_by_op().at("matmul");  // waits for the events
  const double host_ms = profile.host_millis_by_op().at("matmul");
  INFO("device " << device_ms << " ms, host " << host_ms << " ms for 10 queued matmuls");
  CHECK(host_ms > 0);
  CHECK(host_ms < device_ms);  // the host only queued them
}

}  // namespace
}  // namespace moe::test

// The CPU reference grouped GEMM (ops::grouped_matmul and its weight gradient) against a naive
// triple loop per expert, with experts of 0, 1 and 7 rows, and the messages of bad inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "src/ops/ops.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

Tensor offsets_of(const std::vector<int32_t>& counts) {
  std::vector<int32_t> ends{0};
  for (int32_t c : counts) ends.push_back(ends.back() + c);
  return Tensor::from_vector(ends, {static_cast<int64_t>(ends.size())}, DType::i32);
}

}  // namespace

TEST_CASE("grouped matmul equals a naive loop over experts, forward and transposed", "[kernels][grouped]") {
  const bool trans_w = GENERATE(false, true);
  const std::vector<int32_t> counts = {7, 0, 1, 4};  // an expert with no rows and one with one
  const int64_t e_num = 4, n = 12, k = 5, m = 6;
  Tensor offsets = offsets_of(counts);
  Tensor x = test::random_tensor({n, k}, DType::f64, 1);
  Tensor w = test::random_tensor(trans_w ? Shape{e_num, m, k} : Shape{e_num, k, m}, DType::f64, 2);
  Tensor y = test::random_tensor({n, m}, DType::f64, 3);  // overwritten, never read
  ops::grouped_matmul(x, offsets, w, trans_w, y);
  const auto xv = x.to_vector<double>(), wv = w.to_vector<double>();
  std::vector<double> ref(static_cast<size_t>(n * m), 0.0);
  const auto ends = offsets.to_vector<int32_t>();
  for (int64_t e = 0; e < e_num; ++e) {
    for (int64_t r = ends[e]; r < ends[e + 1]; ++r) {
      for (int64_t j = 0; j < m; ++j) {
        double acc = 0;
        for (int64_t i = 0; i < k; ++i) {
          acc += xv[r * k + i] * wv[e * k * m + (trans_w ? j * k + i : i * m + j)];
        }
        ref[r * m + j] = acc;
      }
    }
  }
  INFO("trans_w " << trans_w);
  test::require_close(y.to_vector<double>(), ref, 1e-13, 1e-13, "y");
}

TEST_CASE("grouped matmul weight gradient accumulates x_e^T dy_e and leaves empty experts alone",
          "[kernels][grouped]") {
  const std::vector<int32_t> counts = {0, 1, 7, 3};
  const int64_t e_num = 4, n = 11, k = 3, m = 5;
  Tensor offsets = offsets_of(counts);
  Tensor x = test::random_tensor({n, k}, DType::f64, 11), dy = test::random_tensor({n, m}, DType::f64, 12);
  Tensor dw = test::random_tensor({e_num, k, m}, DType::f64, 13);
  std::vector<double> ref = dw.to_vector<double>();
  ops::grouped_matmul_weight_grad(x, offsets, dy, dw);
  const auto xv = x.to_vector<double>(), dyv = dy.to_vector<double>();
  const auto ends = offsets.to_vector<int32_t>();
  for (int64_t e = 0; e < e_num; ++e) {
    for (int64_t r = ends[e]; r < ends[e + 1]; ++r) {
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < m; ++j) ref[e * k * m + i * m + j] += xv[r * k + i] * dyv[r * m + j];
      }
    }
  }
  test::require_close(dw.to_vector<double>(), ref, 1e-13, 1e-13, "dw");
}

TEST_CASE("grouped matmul rejects bad offsets and shapes with their messages", "[kernels][grouped][errors]") {
  Tensor x = test::random_tensor({5, 3}, DType::f64, 21), w = test::random_tensor({2, 3, 4}, DType::f64, 22);
  Tensor y = Tensor::empty({5, 4}, DType::f64);
  REQUIRE_THROWS_WITH(ops::grouped_matmul(x, offsets_of({3, 3}), w, false, y),
                      Contains("grouped gemm: offsets end at 6 but x has only 5 rows"));
  // Rows past the offsets' end are padding: computed for no expert, left as they were.
  Tensor padded = Tensor::zeros({5, 4}, DType::f64);
  ops::grouped_matmul(x, offsets_of({2, 2}), w, false, padded);
  REQUIRE(padded.rows(4, 5).to_vector<double>() == std::vector<double>(4, 0.0));
  REQUIRE(padded.rows(0, 4).to_vector<double>() != std::vector<double>(16, 0.0));
  REQUIRE_THROWS_WITH(ops::grouped_matmul(x, Tensor::from_vector(std::vector<int32_t>{0, 4, 3}, {3}, DType::i32), w,
                                          false, y),
                      Contains("grouped gemm: offsets decrease at expert 1 (4 then 3)"));
  REQUIRE_THROWS_WITH(ops::grouped_matmul(x, offsets_of({5}), w, false, y),
                      Contains("grouped_matmul: x[N,K] and w[E,K,M] for 1 experts"));
  REQUIRE_THROWS_WITH(ops::grouped_matmul(x, offsets_of({2, 3}), w, true, y),
                      Contains("grouped_matmul: x[5,3] does not match w[2,3,4] (transposed)"));
  Tensor no_experts = Tensor::from_vector(std::vector<int32_t>{0}, {1}, DType::i32);
  REQUIRE_THROWS_WITH(ops::grouped_matmul(x, no_experts, w, false, y),
                      Contains("grouped_matmul: offsets must be i32[E+1] with E >= 1"));
  Tensor dw = Tensor::zeros({2, 3, 3}, DType::f64);
  Tensor dy = test::random_tensor({5, 4}, DType::f64, 23);
  REQUIRE_THROWS_WITH(ops::grouped_matmul_weight_grad(x, offsets_of({2, 3}), dy, dw),
                      Contains("grouped_matmul_weight_grad dw"));
}

TEST_CASE("grouped matmul weight gradient overwrites dw unread when not accumulating", "[kernels][grouped]") {
  const std::vector<int32_t> counts = {0, 1, 7, 3};
  const int64_t e_num = 4, n = 11, k = 3, m = 5;
  Tensor offsets = offsets_of(counts);
  Tensor x = test::random_tensor({n, k}, DType::f64, 21), dy = test::random_tensor({n, m}, DType::f64, 22);
  Tensor fresh = Tensor::zeros({e_num, k, m}, DType::f64);
  ops::grouped_matmul_weight_grad(x, offsets, dy, fresh);
  Tensor dw = Tensor::from_vector(std::vector<double>(static_cast<size_t>(e_num * k * m), std::nan("")),
                                  {e_num, k, m}, DType::f64);
  ops::grouped_matmul_weight_grad(x, offsets, dy, dw, false);
  test::require_close(dw.to_vector<double>(), fresh.to_vector<double>(), 0, 0, "dw");
  REQUIRE(dw.rows(0, 1).to_vector<double>() == std::vector<double>(static_cast<size_t>(k * m), 0.0));
  // No rows at all: zeros written.
  Tensor none = Tensor::from_vector(std::vector<double>(static_cast<size_t>(e_num * k * m), 3.0), {e_num, k, m},
                                    DType::f64);
  ops::grouped_matmul_weight_grad(Tensor::zeros({0, k}, DType::f64), offsets_of({0, 0, 0, 0}),
                                  Tensor::zeros({0, m}, DType::f64), none, false);
  REQUIRE(none.to_vector<double>() == std::vector<double>(static_cast<size_t>(e_num * k * m), 0.0));
}

TEST_CASE("the grouped matmul kernel is chosen by name, and an unknown name is refused", "[kernels][grouped]") {
  ops::set_grouped_matmul_kernel("auto");
  REQUIRE(ops::grouped_matmul_kernel(Device::cpu()) == "cpu");
  REQUIRE_THROWS_WITH(ops::set_grouped_matmul_kernel("wgmma_wide"),
                      Catch::Matchers::Contains("grouped matmul kernel 'wgmma_wide' is not one of auto, mma_sync, "
                                                "wgmma, wgmma_narrow"));
}

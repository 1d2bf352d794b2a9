// The op profile behind `moe bench train --breakdown`: each op is counted once under its kind,
// nested scopes count once, and nothing is recorded when no profile is installed.
#include <catch2/catch.hpp>

#include "src/ops/op_profile.h"
#include "src/ops/ops.h"
#include "tests/test_util.h"

using namespace moe;

TEST_CASE("op profile: ops are counted and timed by kind", "[ops][profile]") {
  Tensor a = test::random_tensor({64, 32}, DType::f32, 1);
  Tensor b = test::random_tensor({32, 48}, DType::f32, 2);
  Tensor c = Tensor::zeros({64, 48}, DType::f32, Device::cpu());
  Tensor d = Tensor::zeros({64, 48}, DType::f32, Device::cpu());

  ops::OpProfile profile;
  ops::set_op_profile(&profile);
  ops::matmul(a, false, b, false, c);
  ops::matmul(a, false, b, false, c);
  ops::add(c, c, d);
  {
    ops::OpScope outer(ops::OpKind::communication, c);
    ops::add(c, c, d);  // inside another timed scope: not counted again
  }
  ops::set_op_profile(nullptr);
  ops::add(c, c, d);  // no profile: not recorded

  REQUIRE(profile.ops() == 4);
  auto ms = profile.millis_by_kind();
  REQUIRE(ms.size() == 3);
  REQUIRE(ms.count("gemm") == 1);
  REQUIRE(ms.count("elementwise") == 1);
  REQUIRE(ms.count("communication") == 1);
  for (const auto& [kind, t] : ms) REQUIRE(t >= 0.0);
  // Per op: each op under its own function's name, a scope given no name under its kind's.
  auto by_op = profile.millis_by_op();
  REQUIRE(by_op.size() == 3);
  REQUIRE(by_op.count("matmul") == 1);
  REQUIRE(by_op.count("add") == 1);
  REQUIRE(by_op.count("communication") == 1);
  double total_kind = 0, total_op = 0;
  for (const auto& [kind, t] : ms) total_kind += t;
  for (const auto& [op, t] : by_op) total_op += t;
  REQUIRE(total_op == Approx(total_kind));
  // Host time per op under the same names; on the CPU the ops run on the host, so it is their time.
  auto host_by_op = profile.host_millis_by_op();
  REQUIRE(host_by_op.size() == by_op.size());
  for (const auto& [op, t] : by_op) REQUIRE(host_by_op.at(op) == Approx(t));

  profile.reset();
  REQUIRE(profile.ops() == 0);
  REQUIRE(profile.millis_by_kind().empty());
}

TEST_CASE("op names come from function signatures", "[ops][profile]") {
  REQUIRE(ops::op_name_from_signature("void moe::ops::grouped_matmul(const moe::Tensor&, bool)") ==
          "grouped_matmul");
  REQUIRE(ops::op_name_from_signature("moe::Tensor moe::ops::softmax(const moe::Tensor&)") == "softmax");
  REQUIRE(ops::op_name_from_signature("void add(int)") == "add");
  REQUIRE(ops::op_name_from_signature("main") == "main");
}

TEST_CASE("op kinds have names", "[ops][profile]") {
  REQUIRE(std::string(ops::op_kind_name(ops::OpKind::gemm)) == "gemm");
  REQUIRE(std::string(ops::op_kind_name(ops::OpKind::communication)) == "communication");
  REQUIRE_THROWS_WITH(ops::op_kind_name(ops::OpKind::count), Catch::Matchers::Contains("out of range"));
}

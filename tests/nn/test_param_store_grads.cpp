// ZeRO-2/3 gradient sharding in the parameter store: the full gradient buffer is freed, a
// module's gradients are served from the range attached for its backward, and misuse is refused.
#include <catch2/catch.hpp>

#include <vector>

#include "src/nn/param_store.h"

using namespace moe;

namespace {

// Two dense parameters of 6 and 4 elements (flat [0,6) and [6,10)) and one expert of 3.
ParamStore small_store() {
  ParamStore store;
  store.add("a.w", {2, 3}, ParamGroup::dense, ParamKind::weight);
  store.add("b.w", {4}, ParamGroup::dense, ParamKind::weight);
  store.add("e.w", {3}, ParamGroup::expert, ParamKind::weight);
  store.allocate(Device::cpu(), DType::f64);
  return store;
}

}  // namespace

TEST_CASE("sharded gradients live in the shard and in ranges attached for a backward", "[nn][zero]") {
  ParamStore store = small_store();
  store.shard(ParamGroup::dense, {3, 8}, false);
  store.shard_grads(ParamGroup::dense, {3, 8});
  REQUIRE(store.grads_sharded(ParamGroup::dense));
  REQUIRE_FALSE(store.grads_sharded(ParamGroup::expert));
  REQUIRE(store.grad_shard(ParamGroup::dense).numel() == 5);
  REQUIRE(store.grad_shard(ParamGroup::expert).numel() == 3);  // unsharded: the whole buffer
  REQUIRE_THROWS_WITH(store.flat_grads(ParamGroup::dense), Catch::Contains("sharded over ranks (ZeRO-2/3)"));
  const ParamId b = store.find("b.w");
  REQUIRE_THROWS_WITH(store.grad(b), Catch::Contains("the gradient of 'b.w' is not open on this rank"));

  // b's backward writes into the attached range, which is the module's own buffer.
  Tensor values = Tensor::zeros({4}, DType::f64);
  store.attach_grads(ParamGroup::dense, {6, 10}, values);
  Tensor g = store.grad(b);
  g.copy_from(Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {4}, DType::f64));
  REQUIRE(values.to_vector<double>() == std::vector<double>{1, 2, 3, 4});
  REQUIRE(store.attached_grads(ParamGroup::dense, {6, 10}).defined());
  REQUIRE_FALSE(store.attached_grads(ParamGroup::dense, {0, 6}).defined());
  REQUIRE_THROWS_WITH(store.grad(store.find("a.w")), Catch::Contains("'a.w' is not open"));
  REQUIRE_THROWS_WITH(store.attach_grads(ParamGroup::dense, {4, 7}, Tensor::zeros({3}, DType::f64)),
                      Catch::Contains("overlaps the attached range [6,10)"));

  // zero_grads clears the shard and what is attached; detaching frees the range.
  store.grad_shard(ParamGroup::dense).copy_from(Tensor::from_vector(std::vector<double>(5, 7.0), {5}, DType::f64));
  store.zero_grads();
  REQUIRE(values.to_vector<double>() == std::vector<double>(4, 0.0));
  REQUIRE(store.grad_shard(ParamGroup::dense).to_vector<double>() == std::vector<double>(5, 0.0));
  store.detach_grads(ParamGroup::dense, {6, 10});
  REQUIRE_THROWS_WITH(store.grad(b), Catch::Contains("is not open"));
  REQUIRE_THROWS_WITH(store.detach_grads(ParamGroup::dense, {6, 10}), Catch::Contains("range [6,10) is not attached"));
}

TEST_CASE("sharding gradients is refused without sharded weights, twice, or with the wrong values", "[nn][zero]") {
  ParamStore store = small_store();
  REQUIRE_THROWS_WITH(store.shard_grads(ParamGroup::dense, {0, 5}),
                      Catch::Contains("sharded over the range its weights are sharded over"));
  REQUIRE_THROWS_WITH(store.attach_grads(ParamGroup::dense, {0, 6}, Tensor::zeros({6}, DType::f64)),
                      Catch::Contains("the dense group's gradients are not sharded (ZeRO-2/3 only)"));
  store.shard(ParamGroup::dense, {0, 5}, false);
  REQUIRE_THROWS_WITH(store.shard_grads(ParamGroup::dense, {0, 4}),
                      Catch::Contains("sharded over the range its weights are sharded over"));
  store.shard_grads(ParamGroup::dense, {0, 5});
  REQUIRE_THROWS_WITH(store.shard_grads(ParamGroup::dense, {0, 5}), Catch::Contains("already sharded"));
  REQUIRE_THROWS_WITH(store.attach_grads(ParamGroup::dense, {0, 6}, Tensor::zeros({5}, DType::f64)),
                      Catch::Contains("attach_grads: expected 6 f64 values"));
  REQUIRE_THROWS_WITH(store.attach_grads(ParamGroup::dense, {8, 12}, Tensor::zeros({4}, DType::f64)),
                      Catch::Contains("attach_grads: range [8,12) is outside the dense group's 10 elements"));
}

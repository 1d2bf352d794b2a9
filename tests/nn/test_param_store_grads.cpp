// Gradients in the parameter store: ZeRO-2/3 sharding (the full gradient buffer is freed, a
// module's gradients are served from the range attached for its backward, misuse is refused) and
// first-write gradients (not cleared by zero_grads; stored by their first writer, else zeroed on use).
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

namespace {

std::vector<double> values_of(const Tensor& t) { return t.to_vector<double>(); }
void fill(Tensor t, double v) {
  t.copy_from(Tensor::from_vector(std::vector<double>(static_cast<size_t>(t.numel()), v), t.shape(), DType::f64));
}

}  // namespace

TEST_CASE("first-write gradients are stored by their first writer and zeroed for any other use", "[nn][grads]") {
  ParamStore store = small_store();
  const ParamId a = store.find("a.w"), b = store.find("b.w"), e = store.find("e.w");
  store.mark_first_write_grad(b);
  store.mark_first_write_grad(e);
  fill(store.flat_grads(ParamGroup::dense), 7.0);
  fill(store.flat_grads(ParamGroup::expert), 7.0);
  store.zero_grads();
  // zero_grads cleared a.w only; b.w and e.w are left for their writers.
  ParamStore::GradWrite first = store.grad_for_write(b);
  REQUIRE_FALSE(first.accumulate);
  REQUIRE(values_of(first.grad) == std::vector<double>(4, 7.0));  // not cleared: the writer stores
  REQUIRE(values_of(store.grad(a)) == std::vector<double>(6, 0.0));
  fill(first.grad, 2.0);
  ParamStore::GradWrite second = store.grad_for_write(b);  // later writers of the step add
  REQUIRE(second.accumulate);
  REQUIRE(values_of(second.grad) == std::vector<double>(4, 2.0));
  // e.w was never written: the flat buffer (what the optimizer reads) shows zeros, and its
  // writer then adds to them.
  REQUIRE(values_of(store.flat_grads(ParamGroup::expert)) == std::vector<double>(3, 0.0));
  REQUIRE(store.grad_for_write(e).accumulate);
  // grad(id) zeroes an unwritten gradient too, and so does grad_shard.
  store.zero_grads();
  REQUIRE(values_of(store.grad(b)) == std::vector<double>(4, 0.0));
  REQUIRE(store.grad_for_write(b).accumulate);
  fill(store.flat_grads(ParamGroup::expert), 5.0);
  store.zero_grads();
  REQUIRE(values_of(store.grad_shard(ParamGroup::expert)) == std::vector<double>(3, 0.0));
}

TEST_CASE("first-write gradients of a sharded group are zeroed by zero_grads as before", "[nn][grads][zero]") {
  ParamStore store = small_store();
  const ParamId b = store.find("b.w");
  store.mark_first_write_grad(b);
  store.zero_grads();  // b.w unwritten, then the group's gradients are sharded
  store.shard(ParamGroup::dense, {0, 10}, false);
  store.shard_grads(ParamGroup::dense, {0, 10});
  fill(store.grad_shard(ParamGroup::dense), 7.0);
  store.zero_grads();
  REQUIRE(values_of(store.grad_shard(ParamGroup::dense)) == std::vector<double>(10, 0.0));
  store.attach_grads(ParamGroup::dense, {6, 10}, Tensor::zeros({4}, DType::f64));
  REQUIRE(store.grad_for_write(b).accumulate);
}

// The expert all-to-all overlap (parallel.a2a_overlap) under mpirun on CPU ranks: the MoE layer
// starts each all-to-all, runs the shared experts (and another micro-batch's work) while it is in
// flight (MPI_Ialltoallv) and finishes it after; training with the overlap, and with micro-batch
// pairs (parallel.a2a_overlap_microbatches), equals training without it and one rank, with expert
// parallelism, shared experts and each ZeRO stage, over several steps.
#include <catch2/catch.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "experts/moe_layer.h"
#include "parallel/communicator.h"
#include "routing/router_registry.h"
#include "src/train/trainer.h"
#include "tests/test_util.h"
#include "tests/train/step_compare.h"
#include "tests/train/train_test_util.h"

using namespace moe;

namespace {

using Phase = std::pair<std::string, int>;  // the phase and the EP group's collectives in flight after it

// One MoE layer with EP over `ep`, a shared expert and the overlap as given; records its phases.
struct TracedLayer {
  ParamStore store;
  std::unique_ptr<MoeLayer> moe;
  std::vector<Phase> phases;
};

std::unique_ptr<TracedLayer> traced_layer(Communicator& ep, bool overlap) {
  constexpr int64_t d = 6;
  auto layer = std::make_unique<TracedLayer>();
  const int64_t experts = 2 * ep.size();
  MoeConfig mc;
  mc.num_experts = experts;
  mc.top_k = 2;
  MoeLayerConfig c;
  c.d_model = d;
  c.num_experts = experts;
  c.d_expert = 5;
  c.num_shared = 1;
  c.d_shared = 4;
  c.ep_group = &ep;
  c.a2a_overlap = overlap;
  TracedLayer* raw = layer.get();
  c.on_phase = [raw, &ep](const char* phase) { raw->phases.emplace_back(phase, ep.in_flight()); };
  RouterSpec spec{d, 11, experts, 2, 0, 0.5};
  layer->moe = std::make_unique<MoeLayer>(layer->store, "moe", c, make_router(layer->store, "moe.router", mc, spec));
  layer->store.allocate(Device::cpu(), DType::f64);
  layer->store.initialize(7);
  return layer;
}

// Runs one forward and backward over this rank's 8 tokens, `other` beside the all-to-alls;
// returns the phases it went through.
std::vector<Phase> run_traced(Communicator& ep, bool overlap, const std::function<void()>& other = {}) {
  auto layer = traced_layer(ep, overlap);
  const int64_t tokens = 8, d = 6;
  Tensor x = test::f64_tensor(test::random_values(tokens * d, 100 + static_cast<uint64_t>(ep.rank())), {tokens, d});
  Tensor dy = test::f64_tensor(test::random_values(tokens * d, 200 + static_cast<uint64_t>(ep.rank())), {tokens, d});
  MoeLayerSaved saved;
  RouteInputs inputs;
  inputs.seq_len = tokens;
  layer->moe->forward(x, inputs, saved, false, other);
  layer->store.zero_grads();
  layer->moe->backward(saved, dy, 1.0f, other);
  return layer->phases;
}

struct Layout {
  int64_t ep = 2, zero = 0, grad_accum = 2;
  std::string name() const {
    return "ep " + std::to_string(ep) + " zero " + std::to_string(zero) + " grad_accum " + std::to_string(grad_accum);
  }
};

Config overlap_config(const test::TempDir& dir, const Layout& layout, bool overlap) {
  Config c = test::tiny_train_config(dir);
  c.model.num_layers = 2;
  c.moe.num_experts = 4;
  c.moe.num_shared_experts = 1;
  c.moe.aux_loss_coef = 0.01;
  c.moe.z_loss_coef = 0.001;
  c.train.micro_batch_size = 2;
  c.train.grad_accum = layout.grad_accum;
  c.parallel.ep = layout.ep;
  c.parallel.zero = layout.zero;
  c.parallel.a2a_overlap = overlap;
  return c;
}

}  // namespace

TEST_CASE("with the overlap the all-to-all is in flight while the shared experts run", "[parallel][moe]") {
  auto world = make_world_communicator(Device::cpu());
  if (world->size() < 2) return;  // the all-to-all dispatcher needs an EP group of several ranks
  const std::vector<Phase> overlapped = run_traced(*world, true);
  const std::vector<Phase> expected_overlap = {
      {"dispatch_start", 1}, {"shared_forward", 1}, {"dispatch_finish", 0}, {"combine_start", 1},
      {"combine_finish", 0}, {"combine_backward_start", 1}, {"shared_backward", 1}, {"combine_backward_finish", 0}};
  REQUIRE(overlapped == expected_overlap);
  // Without it the shared experts run with nothing in flight, before the combine (which adds their
  // output in its own pass).
  const std::vector<Phase> sequential = run_traced(*world, false);
  const std::vector<Phase> expected_sequential = {
      {"dispatch_start", 1},         {"dispatch_finish", 0}, {"shared_forward", 0},
      {"combine_start", 1},          {"combine_finish", 0},  {"combine_backward_start", 1},
      {"combine_backward_finish", 0}};
  REQUIRE(sequential == expected_sequential);
}

TEST_CASE("training with the all-to-all overlap equals training without it and one rank",
          "[parallel][train][moe]") {
  auto world = make_world_communicator(Device::cpu());
  const int n = world->size();
  if (n < 2) return;
  auto self = world->split(world->rank(), 0);
  std::vector<Layout> layouts = {{.ep = 2}, {.ep = 2, .zero = 2}};
  if (n == 4) layouts = {{.ep = 4}, {.ep = 2, .zero = 1}, {.ep = 4, .zero = 3, .grad_accum = 1}};
  if (n == 8) layouts = {{.ep = 4, .zero = 3}, {.ep = 2, .zero = 2}};  // EP x DP 2 and 4
  for (const Layout& layout : layouts) {
    INFO(layout.name() << " on " << n << " ranks");
    test::TempDir dir("moe-a2a-rank" + std::to_string(world->rank()));
    Config with = overlap_config(dir, layout, true), without = overlap_config(dir, layout, false);
    with.train.run_dir = dir.str("with");
    without.train.run_dir = dir.str("without");
    validate_config(with);
    Trainer overlapped(with, 0, *world), sequential(without, 0, *world);
    Config single = without;
    single.train.grad_accum = layout.grad_accum * n;  // every rank's micro-batches on one rank
    single.train.run_dir = dir.str("single");
    single.parallel = ParallelConfig{};
    Trainer reference(single, 0, *self);
    for (int step = 1; step <= 4; ++step) {
      INFO("step " << step);
      StepResult o = overlapped.train_step(), s = sequential.train_step(), r = reference.train_step();
      test::require_same_step(o, s);
      test::require_same_step(o, r);
    }
    // The same layout's shards of the weights after the steps: the gradients were the same.
    for (int g = 0; g < k_num_param_groups; ++g) {
      auto group = static_cast<ParamGroup>(g);
      ParamStore& a = overlapped.model().params();
      ParamStore& b = sequential.model().params();
      test::require_close(a.master_sharded(group) ? a.master_shard(group) : a.flat_master(group),
                          b.master_sharded(group) ? b.master_shard(group) : b.flat_master(group), 1e-6, 1e-5,
                          "weights after 4 steps with and without the overlap");
    }
  }
}

TEST_CASE("the other micro-batch's work runs while the all-to-all is in flight", "[parallel][moe]") {
  auto world = make_world_communicator(Device::cpu());
  if (world->size() < 2) return;
  int ran = 0;
  const std::vector<Phase> phases = run_traced(*world, true, [&] { ++ran; });
  REQUIRE(ran == 2);
  const std::vector<Phase> expected = {
      {"dispatch_start", 1},         {"shared_forward", 1},  {"other_forward", 1},          {"dispatch_finish", 0},
      {"combine_start", 1},          {"combine_finish", 0},  {"combine_backward_start", 1}, {"shared_backward", 1},
      {"other_backward", 1},         {"combine_backward_finish", 0}};
  REQUIRE(phases == expected);
}

TEST_CASE("training with micro-batch pairs equals training without them and one rank", "[parallel][train][moe]") {
  auto world = make_world_communicator(Device::cpu());
  const int n = world->size();
  if (n < 2) return;
  auto self = world->split(world->rank(), 0);
  std::vector<Layout> layouts = {{.ep = 2}, {.ep = 2, .zero = 2}, {.ep = 2, .zero = 3, .grad_accum = 4}};
  if (n == 4) layouts = {{.ep = 4}, {.ep = 2, .zero = 1}};
  if (n == 8) layouts = {{.ep = 4, .zero = 3}, {.ep = 2, .zero = 2}};
  for (const Layout& layout : layouts) {
    INFO(layout.name() << " on " << n << " ranks");
    test::TempDir dir("moe-pairs-rank" + std::to_string(world->rank()));
    Config paired = overlap_config(dir, layout, true), plain = overlap_config(dir, layout, true);
    paired.parallel.a2a_overlap_microbatches = true;
    paired.train.run_dir = dir.str("paired");
    plain.train.run_dir = dir.str("plain");
    validate_config(paired);
    Trainer with_pairs(paired, 0, *world), without(plain, 0, *world);
    Config single = plain;
    single.train.grad_accum = layout.grad_accum * n;
    single.train.run_dir = dir.str("single");
    single.parallel = ParallelConfig{};
    Trainer reference(single, 0, *self);
    for (int step = 1; step <= 4; ++step) {
      INFO("step " << step);
      StepResult p = with_pairs.train_step(), s = without.train_step(), r = reference.train_step();
      test::require_same_step(p, s);
      test::require_same_step(p, r);
    }
    REQUIRE(with_pairs.model().pair_forwards() == 4 * layout.grad_accum / 2);  // every micro-batch in a pair
    REQUIRE(without.model().pair_forwards() == 0);
    for (int g = 0; g < k_num_param_groups; ++g) {
      auto group = static_cast<ParamGroup>(g);
      ParamStore& a = with_pairs.model().params();
      ParamStore& b = without.model().params();
      test::require_close(a.master_sharded(group) ? a.master_shard(group) : a.flat_master(group),
                          b.master_sharded(group) ? b.master_shard(group) : b.flat_master(group), 1e-6, 1e-5,
                          "weights after 4 steps with and without micro-batch pairs");
    }
  }
}

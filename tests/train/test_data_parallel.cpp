// Data, expert and ZeRO parallelism under mpirun: N ranks with one micro-batch each reproduce,
// step by step, the losses and weights of one rank accumulating N micro-batches (the same
// global batch); checkpoints move between layouts.
#include <catch2/catch.hpp>

#include <filesystem>

#include <mpi.h>

#include "parallel/communicator.h"
#include "src/tools/bench_dispatch.h"
#include "src/train/trainer.h"
#include "tests/test_util.h"
#include "tests/train/step_compare.h"
#include "tests/train/train_test_util.h"

using namespace moe;

TEST_CASE("N-rank data parallelism matches one rank at the same global batch", "[parallel][train]") {
  auto world = make_world_communicator(Device::cpu());
  int rank = world->rank(), ranks = world->size();
  // Each rank writes its own copy of the data: no two processes touch the same files.
  test::TempDir dir("moe-dp-rank" + std::to_string(rank));
  Config c = test::tiny_train_config(dir);
  c.train.micro_batch_size = 2;
  c.train.grad_accum = 1;
  // Both Switch scopes: per micro-batch (the default) and over the whole global batch; and the
  // aux-loss-free expert bias, whose loads are summed over the ranks on the device.
  const std::string variant = GENERATE(std::string("micro_batch"), std::string("global_batch"),
                                       std::string("expert bias"), std::string("masked_lm"),
                                       std::string("masked_lm nsp"), std::string("span_corruption"));
  INFO("variant " << variant);
  c.moe.balance_scope = variant == "global_batch" ? "global_batch" : "micro_batch";
  if (variant == "expert bias") {
    c.moe.router = "sigmoid";
    c.moe.expert_bias_rate = 0.05;
  }
  c.objective.nsp = variant == "masked_lm nsp";  // each rank pairs its own sequences
  if (variant.rfind("masked_lm", 0) == 0) test::use_masked_lm(c, dir);  // each rank masks its own sequences
  if (variant == "span_corruption") test::use_span_corruption(c, dir);  // an encoder-decoder
  Trainer parallel(c, 0, *world);

  Config single = c;
  single.train.grad_accum = ranks;
  auto self = world->split(rank, 0);  // a one-rank group: the reference run on every rank
  REQUIRE(self->size() == 1);
  Trainer reference(single, 0, *self);

  for (int step = 1; step <= 5; ++step) {
    StepResult p = parallel.train_step();
    StepResult r = reference.train_step();
    INFO("step " << step << " rank " << rank);
    test::require_same_step(p, r);
    if (variant == "expert bias") REQUIRE(!p.routing.at(0).bias.empty());
    if (c.objective.nsp) {
      REQUIRE(p.nsp_accuracy >= 0);
      REQUIRE(p.nsp_accuracy == r.nsp_accuracy);
      REQUIRE(p.nsp_loss == Approx(r.nsp_loss).epsilon(1e-5));
    }
  }
  for (int g = 0; g < k_num_param_groups; ++g) {
    auto group = static_cast<ParamGroup>(g);
    test::require_close(parallel.model().params().flat_master(group), reference.model().params().flat_master(group),
                        1e-5, 1e-4, "weights after 5 steps");
  }
}

TEST_CASE("global_batch Switch statistics span all micro-batches", "[parallel][train][balance]") {
  auto world = make_world_communicator(Device::cpu());
  auto self = world->split(world->rank(), 0);
  test::TempDir dir("moe-scope-rank" + std::to_string(world->rank()));
  Config c = test::tiny_train_config(dir);
  c.train.micro_batch_size = 1;
  c.train.grad_accum = 4;
  c.moe.aux_loss_coef = 0.1;
  Config global = c;
  global.moe.balance_scope = "global_batch";
  Trainer per_micro(c, 0, *self);
  Trainer whole(global, 0, *self);
  StepResult a = per_micro.train_step();
  StepResult b = whole.train_step();
  REQUIRE(a.loss == b.loss);  // the same forward; only the balancing statistics differ
  REQUIRE(a.routing[0].tokens_per_expert == b.routing[0].tokens_per_expert);
  // Mean over micro-batches of alpha*E*sum f P  vs  alpha*E*sum F P over the step: different
  // numbers for uneven micro-batches; the global one from the step's summed counts.
  const auto& counts = b.routing[0].tokens_per_expert;
  int64_t slots = 0;
  for (int64_t n : counts) slots += n;
  REQUIRE(slots == 4 * c.model.seq_len * c.moe.top_k);
  REQUIRE(a.aux_loss != b.aux_loss);
  REQUIRE(b.aux_loss > 0);
}

namespace {

struct Layout {
  int64_t ep, zero;
  int64_t grad_accum = 1;  // micro-batches per rank: ZeRO-2/3 reduce after each one's backward
  bool masked_lm = false;  // model.objective = masked_lm
  bool nsp = false;        // with next-sentence prediction
  bool span_corruption = false;  // model.objective = span_corruption (the encoder-decoder)
  // moe.experts_impl = grouped in the parallel run (first-write expert gradients through the
  // data-parallel reductions, ZeRO and expert parallelism; the reference keeps the default)
  bool grouped = false;
};

}  // namespace

// Every layout trains the same model as one rank. Tolerance: the same f32 sums in another
// order (all-reduce, reduce-scatter, all-to-all) and AdamW's division by sqrt(v) amplify
// rounding at most to ~1e-5 relative over 5 steps of this tiny model.
TEST_CASE("expert parallelism and ZeRO match one rank; checkpoints cross layouts", "[parallel][train][ep][zero]") {
  auto world = make_world_communicator(Device::cpu());
  const int ranks = world->size();
  auto self = world->split(world->rank(), 0);
  std::vector<Layout> layouts = {{1, 1}, {1, 2}, {1, 3}};
  for (int64_t ep = 2; ep <= ranks; ep *= 2) {
    for (int64_t zero = 0; zero <= 3; ++zero) layouts.push_back({ep, zero});
    layouts.push_back({ep, 2, 2});
    layouts.push_back({ep, 3, 2});
  }
  if (ranks >= 4) layouts.push_back({2, 3});
  layouts.push_back({2, 2, 1, true});  // masked LM under EP 2 x ZeRO-2
  layouts.push_back({.ep = 2, .zero = 3, .masked_lm = true, .nsp = true});  // and with next-sentence prediction under ZeRO-3
  // the encoder-decoder under EP 2 x ZeRO-2 (reduce per micro-batch), and under ZeRO-3 (parameters gathered per unit)
  layouts.push_back({.ep = 2, .zero = 2, .grad_accum = 2, .span_corruption = true});
  layouts.push_back({.ep = 1, .zero = 3, .span_corruption = true});
  // the grouped experts: reductions overlapped with the backward (ZeRO-0), ZeRO-1, sharded ZeRO-3
  layouts.push_back({.ep = 2, .zero = 0, .grad_accum = 2, .grouped = true});
  layouts.push_back({.ep = 1, .zero = 1, .grouped = true});
  layouts.push_back({.ep = 2, .zero = 3, .grad_accum = 2, .grouped = true});
  // One run directory all ranks can read (rank 0 writes the checkpoints there).
  const std::string shared = test::shared_run_dir("moe-ep-shared-" + std::to_string(ranks));
  for (const Layout& layout : layouts) {
    INFO("ep " << layout.ep << " zero " << layout.zero << " grad_accum " << layout.grad_accum
                << (layout.masked_lm ? " masked_lm" : "") << (layout.nsp ? " nsp" : "")
                << (layout.span_corruption ? " span_corruption" : "") << (layout.grouped ? " grouped" : "") << " on " << ranks
               << " ranks");
    test::TempDir dir("moe-ep-rank" + std::to_string(world->rank()));
    Config c = test::tiny_train_config(dir);
    c.train.micro_batch_size = 2;
    c.train.run_dir = shared;
    c.parallel.ep = layout.ep;
    c.parallel.zero = layout.zero;
    c.train.grad_accum = layout.grad_accum;
    c.parallel.overlap_grad_reduce = layout.zero != 1;  // both gradient-reduction paths
    c.objective.nsp = layout.nsp;
    if (layout.grouped) c.moe.experts_impl = "grouped";
    if (layout.masked_lm) test::use_masked_lm(c, dir);
    if (layout.span_corruption) test::use_span_corruption(c, dir);
    if (world->rank() == 0) std::filesystem::remove_all(shared);
    world->barrier();
    Trainer parallel(c, 0, *world);

    Config single = c;
    single.train.grad_accum = ranks * layout.grad_accum;
    single.train.run_dir = dir.str("reference");
    single.parallel = ParallelConfig{};
    single.moe.experts_impl = "auto";
    Trainer reference(single, 0, *self);
    for (int step = 1; step <= 5; ++step) {
      StepResult p = parallel.train_step();
      StepResult r = reference.train_step();
      INFO("step " << step);
      test::require_same_step(p, r);
    }
    parallel.save_checkpoint();
    const std::string ckpt = shared + "/checkpoints/step_5";
    StepResult next = parallel.train_step();

    // The same layout resumes exactly (optimizer state included).
    Trainer resumed(c, 0, *world);
    resumed.load_checkpoint(ckpt, true);
    REQUIRE(resumed.step() == 5);
    REQUIRE(resumed.train_step().loss == next.loss);

    // One rank loads the layout's checkpoint: the one-rank reference's weights.
    Trainer loaded(single, 0, *self);
    loaded.load_checkpoint(ckpt, true);
    for (int g = 0; g < k_num_param_groups; ++g) {
      auto group = static_cast<ParamGroup>(g);
      test::require_close(loaded.model().params().flat_master(group), reference.model().params().flat_master(group),
                          1e-5, 1e-4, "weights loaded into one rank");
    }
    // And the layout loads a one-rank checkpoint: the next step matches the reference's.
    reference.save_checkpoint();
    Trainer from_single(c, 0, *world);
    from_single.load_checkpoint(single.train.run_dir + "/checkpoints/step_5", true);
    REQUIRE(from_single.train_step().loss == Approx(reference.train_step().loss).epsilon(1e-5));
    world->barrier();
  }
  if (world->rank() == 0) std::filesystem::remove_all(shared);
}

// train.init_from under mpirun: rank 0 resolves the source run's newest checkpoint and every rank
// loads its part of it (here under EP x ZeRO-3, each rank a shard), so the fresh run starts from
// the source's weights (at a learning rate of 1e-30 they stay there; compared on one rank).
TEST_CASE("train.init_from: every rank starts from the source run's weights", "[parallel][train][checkpoint]") {
  auto world = make_world_communicator(Device::cpu());
  const int ranks = world->size();
  auto self = world->split(world->rank(), 0);
  test::TempDir dir("moe-init-from-rank" + std::to_string(world->rank()));
  const std::string source = test::shared_run_dir("moe-init-from-source-" + std::to_string(ranks));
  const std::string tuned_dir = test::shared_run_dir("moe-init-from-tuned-" + std::to_string(ranks));
  if (world->rank() == 0) {
    std::filesystem::remove_all(source);
    std::filesystem::remove_all(tuned_dir);
  }
  world->barrier();
  Config c = test::tiny_train_config(dir);
  c.train.micro_batch_size = 2;
  c.train.steps = 3;
  c.train.run_dir = source;
  c.parallel.ep = 2;
  c.parallel.zero = 3;
  Trainer(c, 0, *world).train();

  Config tuned = c;
  tuned.train.run_dir = tuned_dir;
  tuned.train.init_from = source;
  tuned.train.steps = 1;
  tuned.optim.lr = 1e-30;
  tuned.optim.min_lr = 0;
  Trainer(tuned, 0, *world).train();
  world->barrier();

  Config single = c;
  single.parallel = ParallelConfig{};
  single.train.run_dir = dir.str("single");
  Trainer from_source(single, 0, *self), from_tuned(single, 0, *self);
  from_source.load_checkpoint(source + "/checkpoints/step_3", false);
  from_tuned.load_checkpoint(tuned_dir + "/checkpoints/step_1", false);
  for (int g = 0; g < k_num_param_groups; ++g) {
    auto group = static_cast<ParamGroup>(g);
    test::require_close(from_tuned.model().params().flat_master(group), from_source.model().params().flat_master(group),
                        1e-12, 0, "the fresh run's weights against its source's");
  }
  world->barrier();
  if (world->rank() == 0) {
    std::filesystem::remove_all(source);
    std::filesystem::remove_all(tuned_dir);
  }
}

TEST_CASE("the dispatcher benchmark counts the rows that cross ranks", "[parallel][bench]") {
  auto world = make_world_communicator(Device::cpu());
  test::TempDir dir("moe-bench-dispatch-rank" + std::to_string(world->rank()));
  Config c = test::tiny_train_config(dir);
  c.moe.num_experts = 4;
  DispatchBenchResult r = bench_dispatch(c, *world, 1, 2, 7);
  const int64_t tokens = c.train.micro_batch_size * c.model.seq_len;
  REQUIRE(r.rows_sent_remote <= tokens * c.moe.top_k);
  REQUIRE(r.bytes_out == (r.rows_sent_remote + r.rows_received_remote) * c.model.d_model * 4);
  // Every row that leaves one rank arrives at another.
  std::vector<double> totals = {static_cast<double>(r.rows_sent_remote), static_cast<double>(r.rows_received_remote)};
  world->all_reduce_sum(totals);
  REQUIRE(totals[0] == totals[1]);
  if (world->size() > 1) REQUIRE(totals[0] > 0);
  REQUIRE(r.gb_per_s > 0);
  // The phases alone, and the shared experts after the dispatch or during it: every time taken.
  for (double ms : {r.dispatch_ms, r.combine_ms, r.shared_ms, r.sequential_ms, r.overlapped_ms}) REQUIRE(ms > 0);
  const nlohmann::json out = to_json(r);
  for (const char* key : {"dispatch_ms", "combine_ms", "shared_experts_ms", "sequential_ms", "overlapped_ms"})
    REQUIRE(out.contains(key));
}

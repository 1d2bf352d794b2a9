// Data parallelism under mpirun: N ranks with one micro-batch each reproduce, step by step,
// the losses and weights of one rank accumulating N micro-batches (the same global batch).
#include <catch2/catch.hpp>

#include <mpi.h>

#include "parallel/communicator.h"
#include "src/train/trainer.h"
#include "tests/test_util.h"
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
    // The same sums in another order (all-reduce vs accumulation): float rounding only.
    REQUIRE(p.loss == Approx(r.loss).epsilon(1e-5));
    REQUIRE(p.aux_loss == Approx(r.aux_loss).epsilon(1e-4));
    REQUIRE(p.grad_norm == Approx(r.grad_norm).epsilon(1e-4));
    REQUIRE(p.routing.size() == r.routing.size());
    for (size_t i = 0; i < p.routing.size(); ++i) {
      REQUIRE(p.routing[i].tokens_per_expert == r.routing[i].tokens_per_expert);
      REQUIRE(p.routing[i].slots == r.routing[i].slots);
    }
  }
  for (int g = 0; g < k_num_param_groups; ++g) {
    auto group = static_cast<ParamGroup>(g);
    test::require_close(parallel.model().params().flat_master(group), reference.model().params().flat_master(group),
                        1e-5, 1e-4, "weights after 5 steps");
  }
}

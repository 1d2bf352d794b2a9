// Initialisation across parallel layouts under mpirun: right after start-up every rank's part of
// every parameter (TP column/row shards, PP stages, EP experts, ZeRO-3 flat ranges) equals the
// same elements of the one-rank model, bit for bit.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/train/trainer.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

using namespace moe;

namespace {

struct Layout {
  int64_t tp = 1, pp = 1, ep = 1, zero = 0;
  std::string name() const {
    return "tp " + std::to_string(tp) + " pp " + std::to_string(pp) + " ep " + std::to_string(ep) + " zero " +
           std::to_string(zero);
  }
};

Config init_config(const test::TempDir& dir, const Layout& layout) {
  Config c = test::model_parallel_config(dir);
  c.train.seed = 31;
  if (layout.tp == 4) c.model.num_kv_heads = 4;
  c.parallel.tp = layout.tp;
  c.parallel.pp = layout.pp;
  c.parallel.ep = layout.ep;
  c.parallel.zero = layout.zero;
  validate_config(c);
  return c;
}

// This rank's values of parameter `id` against the one-rank model's whole parameter.
void require_own_part(const ParamStore& own, ParamId id, const ParamStore& whole) {
  const ParamInfo& p = own.info(id);
  INFO(p.name);
  const Tensor full = whole.master(whole.find(p.name)).to(Device::cpu());
  const std::vector<float> expected = local_part(p, full).to_vector<float>();
  if (!own.master_sharded(p.group) || p.kind == ParamKind::buffer) {
    REQUIRE(own.master(id).to_vector<float>() == expected);
    return;
  }
  // ZeRO: this rank keeps flat elements shard_range of its group; compare what lies in `p`.
  const FlatRange held = own.shard_range(p.group), part = intersect(own.range(id), held);
  if (part.empty()) return;
  const std::vector<float> got =
      own.master_shard(p.group).rows(part.begin - held.begin, part.end - held.begin).to_vector<float>();
  REQUIRE(got == std::vector<float>(expected.begin() + (part.begin - p.offset), expected.begin() + (part.end - p.offset)));
}

void check_layout(Communicator& world, Communicator& self, const Layout& layout, const std::string& shared) {
  INFO(layout.name() << " on " << world.size() << " ranks");
  test::TempDir dir("moe-init-rank" + std::to_string(world.rank()));
  Config c = init_config(dir, layout);
  c.train.run_dir = shared;
  if (world.rank() == 0) std::filesystem::remove_all(shared);
  world.barrier();
  Trainer parallel(c, 0, world);
  Config single = c;
  single.train.run_dir = dir.str("single");
  single.parallel = ParallelConfig{};
  Trainer reference(single, 0, self);
  const ParamStore& own = parallel.model().params();
  const ParamStore& whole = reference.model().params();
  int64_t split = 0;
  for (size_t i = 0; i < own.infos().size(); ++i) {
    require_own_part(own, static_cast<ParamId>(i), whole);
    split += own.infos()[i].is_split() ? 1 : 0;
  }
  // The layout really splits something (else the check would compare whole tensors only).
  if (layout.tp > 1 || layout.ep > 1) REQUIRE(split > 0);
  if (layout.pp > 1) REQUIRE(own.infos().size() < whole.infos().size());
  if (layout.zero == 3) REQUIRE(own.master_sharded(ParamGroup::dense));
  world.barrier();
}

}  // namespace

TEST_CASE("every layout starts from the one-rank model's weights", "[parallel][train][init]") {
  auto world = make_world_communicator(Device::cpu());
  auto self = world->split(world->rank(), 0);
  std::vector<Layout> layouts;
  if (world->size() == 2) {
    layouts = {{.tp = 2}, {.pp = 2}, {.ep = 2}, {.zero = 3}, {.ep = 2, .zero = 3}};
  } else if (world->size() == 4) {
    layouts = {{.tp = 4},
               {.pp = 4},
               {.ep = 4},
               {.tp = 2, .pp = 2},
               {.tp = 2, .ep = 2, .zero = 3},
               {.pp = 2, .ep = 2, .zero = 1},
               {.pp = 2, .ep = 2, .zero = 3}};
  }
  REQUIRE(!layouts.empty());
  const std::string shared = test::shared_run_dir("moe-init-shared-" + std::to_string(world->size()));
  for (const Layout& layout : layouts) check_layout(*world, *self, layout, shared);
  if (world->rank() == 0) std::filesystem::remove_all(shared);
}

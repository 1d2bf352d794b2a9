// Routing statistics over micro-batches: counts add up, means are weighted, and a micro-batch
// whose counts stayed on the device (a GPU step that collects no statistics) adds none.
#include <catch2/catch.hpp>

#include "src/train/moe_stats.h"

namespace moe::test {
namespace {

MoeLayerStats micro(std::vector<int64_t> counts, double aux) {
  MoeLayerStats s;
  s.tokens_per_expert = std::move(counts);
  for (int64_t c : s.tokens_per_expert) s.slots += c;
  s.aux_loss = aux;
  return s;
}

TEST_CASE("routing statistics add counts and weight means over micro-batches", "[train][stats]") {
  std::vector<LayerRoutingStats> step;
  accumulate_routing_stats(step, {micro({1, 2, 3}, 0.2)}, {4}, 0.5);
  accumulate_routing_stats(step, {micro({3, 2, 1}, 0.4)}, {4}, 0.5);
  REQUIRE(step.size() == 1);
  REQUIRE(step[0].layer == 4);
  REQUIRE(step[0].tokens_per_expert == std::vector<int64_t>{4, 4, 4});
  REQUIRE(step[0].slots == 12);
  REQUIRE(std::abs(step[0].aux_loss - 0.3) < 1e-15);
}

TEST_CASE("a micro-batch without host counts adds none; sizes must otherwise agree", "[train][stats]") {
  std::vector<LayerRoutingStats> step(1);
  step[0].layer = 2;
  step[0].tokens_per_expert.assign(3, 0);  // as the trainer prepares a step
  accumulate_routing_stats(step, {micro({}, 0.0)}, {2}, 1.0);
  REQUIRE(step[0].tokens_per_expert == std::vector<int64_t>{0, 0, 0});
  accumulate_routing_stats(step, {micro({1, 0, 1}, 0.0)}, {2}, 1.0);
  REQUIRE(step[0].tokens_per_expert == std::vector<int64_t>{1, 0, 1});
  REQUIRE_THROWS_WITH(accumulate_routing_stats(step, {micro({1, 1}, 0.0)}, {2}, 1.0),
                      Catch::Contains("layer 2: 2 experts added to 3"));
}

}  // namespace
}  // namespace moe::test

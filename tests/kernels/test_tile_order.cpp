// The persistent weight gradient's tile order (kernels/tile_order.h): the experts ranked by
// decreasing rows, every tile taken once by the snake, and the blocks' shares under a cost model
// (a tile costs its expert's k-slices plus one for its epilogue) more even than the plain stride
// over the experts in index order.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include "kernels/tile_order.h"

namespace moe::test {
namespace {

std::vector<int32_t> order_of(const std::vector<int32_t>& rows) {
  const auto n = static_cast<int64_t>(rows.size());
  std::vector<int32_t> order(rows.size(), -1);
  for (int64_t e = 0; e < n; ++e) {
    order[static_cast<size_t>(kernels::rank_by_rows(rows.data(), n, e))] = static_cast<int32_t>(e);
  }
  return order;
}

// The most loaded block's share over the mean, `per_expert` tiles an expert, experts in `order`.
double busiest_over_mean(const std::vector<int32_t>& rows, const std::vector<int32_t>& order, int per_expert,
                         int blocks, bool snake) {
  const int64_t tiles = static_cast<int64_t>(rows.size()) * per_expert;
  std::vector<double> load(static_cast<size_t>(blocks), 0.0);
  for (int i = 0; static_cast<int64_t>(i) * blocks < tiles; ++i) {
    for (int b = 0; b < blocks; ++b) {
      const int64_t t = snake ? kernels::snake_tile(i, b, blocks) : static_cast<int64_t>(i) * blocks + b;
      if (t >= tiles) continue;
      const int32_t expert_rows = rows[static_cast<size_t>(order[static_cast<size_t>(t / per_expert)])];
      load[static_cast<size_t>(b)] += std::ceil(expert_rows / 64.0) + 1.0;
    }
  }
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / blocks;
  return *std::max_element(load.begin(), load.end()) / mean;
}

TEST_CASE("experts rank by decreasing rows, ties by index", "[kernels][grouped]") {
  CHECK(order_of({5, 9, 0, 9, 5, 1}) == std::vector<int32_t>{1, 3, 0, 4, 5, 2});
  CHECK(order_of({0, 0, 0}) == std::vector<int32_t>{0, 1, 2});
  CHECK(order_of({7}) == std::vector<int32_t>{0});
}

TEST_CASE("the snake takes every tile once, whole rounds or not", "[kernels][grouped]") {
  for (int blocks : {1, 2, 7, 132}) {
    for (int64_t tiles : {int64_t{1}, int64_t{blocks}, int64_t{3} * blocks + 5, int64_t{1152}}) {
      INFO("blocks " << blocks << " tiles " << tiles);
      std::vector<int> taken(static_cast<size_t>(tiles), 0);
      for (int b = 0; b < blocks; ++b) {
        for (int i = 0; static_cast<int64_t>(i) * blocks < tiles; ++i) {
          const int64_t t = kernels::snake_tile(i, b, blocks);
          if (t < tiles) ++taken[static_cast<size_t>(t)];
        }
      }
      CHECK(std::all_of(taken.begin(), taken.end(), [](int n) { return n == 1; }));
    }
  }
}

TEST_CASE("sorted experts and the snake even out the blocks' shares of uneven experts", "[kernels][grouped]") {
  // MoE-small's up-projection weight gradient: 64 experts, 18 wide tiles each, 132 blocks; expert
  // e's rows go as exp(2 (e / 63 - 1/2)) (7.4 times from first to last, 98,304 rows in all), then
  // pairs swapped so that index order means nothing.
  std::vector<int32_t> rows(64);
  double sum = 0;
  for (int e = 0; e < 64; ++e) sum += std::exp(2.0 * (e / 63.0 - 0.5));
  for (int e = 0; e < 64; ++e) {
    rows[static_cast<size_t>(e)] = static_cast<int32_t>(98304 * std::exp(2.0 * (e / 63.0 - 0.5)) / sum);
  }
  for (size_t e = 0; e < rows.size(); e += 2) std::swap(rows[e], rows[rows.size() - 1 - e]);
  std::vector<int32_t> index_order(rows.size());
  std::iota(index_order.begin(), index_order.end(), 0);
  const double plain = busiest_over_mean(rows, index_order, 18, 132, false);
  const double sorted = busiest_over_mean(rows, order_of(rows), 18, 132, true);
  CHECK(sorted < 1.05);  // 1152 tiles in 8.73 rounds: a few percent of unevenness is the rounds'
  CHECK(sorted < plain - 0.05);
  // Even experts: the same either way (the order only matters when rows differ).
  const std::vector<int32_t> even(64, 1536);
  CHECK(busiest_over_mean(even, order_of(even), 18, 132, true) ==
        Approx(busiest_over_mean(even, index_order, 18, 132, false)));
}

}  // namespace
}  // namespace moe::test

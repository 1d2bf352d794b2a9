// The sample order's building blocks: the keyed permutation (a bijection, seeded, uniform) and
// the dataset blend (its proportions over many samples and over every prefix, pick and count
// agreeing, large indices, bad weights).
#include <catch2/catch.hpp>

#include <cmath>
#include <set>
#include <vector>

#include "src/data/sample_index.h"

using namespace moe::data;

TEST_CASE("a permutation is a bijection of [0, n) for awkward sizes", "[data][sample_index]") {
  for (uint64_t n : {1ull, 2ull, 3ull, 7ull, 100ull, 1000ull, 4097ull}) {
    INFO("n " << n);
    const Permutation p(n, 12345);
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t x = p(i);
      REQUIRE(x < n);
      REQUIRE(seen.insert(x).second);
    }
  }
  REQUIRE_THROWS_WITH(Permutation(0, 1), Catch::Contains("permutation: size 0 outside [1, 2^62]"));
  REQUIRE_THROWS_WITH(Permutation(5, 1)(5), Catch::Contains("permutation: index 5 outside [0, 5)"));
}

TEST_CASE("permutations depend on the key, are reproducible and uniform over keys", "[data][sample_index]") {
  const uint64_t n = 1000;
  std::vector<uint64_t> a, b, c;
  for (uint64_t i = 0; i < n; ++i) {
    a.push_back(Permutation(n, 7)(i));
    b.push_back(Permutation(n, 7)(i));
    c.push_back(Permutation(n, 8)(i));
  }
  REQUIRE(a == b);
  REQUIRE(a != c);
  // Where element 0 lands over 20000 keys: each of 10 places about 2000 times (~6 sigma band),
  // and the pairs (first, second) are not tied to each other.
  std::vector<int> where(10, 0);
  int same_order = 0;
  for (uint64_t key = 0; key < 20000; ++key) {
    const Permutation p(10, key);
    where[p(0)] += 1;
    same_order += p(0) < p(1) ? 1 : 0;
  }
  for (int count : where) REQUIRE(std::abs(count - 2000) < 260);
  REQUIRE(std::abs(same_order - 10000) < 430);
}

TEST_CASE("the blend gives each dataset its weight's share, measured over many samples", "[data][sample_index]") {
  const std::vector<double> weights = {0.7, 0.2, 0.1};
  const DatasetBlend blend(weights);
  const int64_t n = 100000;
  std::vector<int64_t> counts(3, 0);
  for (int64_t g = 0; g < n; ++g) counts[static_cast<size_t>(blend.pick(g).dataset)] += 1;
  for (size_t d = 0; d < 3; ++d) {
    INFO("dataset " << d << " got " << counts[d]);
    REQUIRE(std::abs(static_cast<double>(counts[d]) - weights[d] * n) <= 2.0);
    REQUIRE(blend.count(static_cast<int64_t>(d), n) == counts[d]);
  }
}

TEST_CASE("every prefix of the blend is within log2(D) samples of its weights", "[data][sample_index]") {
  // Uneven weights (not summing to 1), five datasets: a tree of depth 3.
  const std::vector<double> weights = {3.0, 1.0, 0.5, 0.25, 5.25};
  const double total = 10.0;
  const DatasetBlend blend(weights);
  std::vector<int64_t> counts(weights.size(), 0);
  for (int64_t g = 0; g < 20000; ++g) {
    const BlendPick pick = blend.pick(g);
    // Ordinals count up from 0 in each dataset: pick and count agree.
    REQUIRE(pick.ordinal == counts[static_cast<size_t>(pick.dataset)]);
    counts[static_cast<size_t>(pick.dataset)] += 1;
    for (size_t d = 0; d < weights.size(); ++d) {
      const double expected = static_cast<double>(g + 1) * weights[d] / total;
      REQUIRE(std::abs(static_cast<double>(counts[d]) - expected) <= 3.0);
    }
  }
}

TEST_CASE("the blend handles one dataset, tiny weights and huge sample indices", "[data][sample_index]") {
  const DatasetBlend one({2.5});
  REQUIRE(one.pick(12345).dataset == 0);
  REQUIRE(one.pick(12345).ordinal == 12345);
  const DatasetBlend skewed({1e-6, 1.0});
  int64_t rare = 0;
  for (int64_t g = 0; g < 3000000; ++g) rare += skewed.pick(g).dataset == 0 ? 1 : 0;
  REQUIRE(rare == 3);  // 3e6 * 1e-6 / (1 + 1e-6)
  const DatasetBlend blend({1.0, 3.0});
  const int64_t huge = int64_t{1} << 50;
  REQUIRE(std::llabs(blend.count(1, huge) - 3 * (huge / 4)) <= 1);
  const BlendPick far = blend.pick(huge + 7);
  REQUIRE(far.ordinal == blend.count(far.dataset, huge + 7));
}

TEST_CASE("blend weights must be positive and finite", "[data][sample_index][errors]") {
  REQUIRE_THROWS_WITH(DatasetBlend({}), Catch::Contains("dataset blend: no datasets"));
  REQUIRE_THROWS_WITH(DatasetBlend({1.0, 0.0}), Catch::Contains("dataset blend: weight 1 = 0 must be positive"));
  REQUIRE_THROWS_WITH(DatasetBlend({-1.0}), Catch::Contains("dataset blend: weight 0 = -1 must be positive"));
  REQUIRE_THROWS_WITH(DatasetBlend({1.0, std::nan("")}), Catch::Contains("must be positive"));
}

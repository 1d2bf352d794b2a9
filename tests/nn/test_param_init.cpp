// Parameter initialisation (src/nn/param_init.h): each value equals an independent Philox4x32-10 +
// Box-Muller evaluation written here from the published algorithm; row, column and ZeRO-3 shards
// hold exactly the whole parameter's elements; the thread count changes nothing; the normal's
// sample mean and standard deviation are those asked for.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "src/nn/param_init.h"
#include "src/nn/param_store.h"

using namespace moe;

namespace {

// Philox4x32-10 (Salmon et al., SC'11), written from the paper's constants, not Random123's code.
using Block = std::array<uint32_t, 4>;
Block philox4x32_10(Block ctr, std::array<uint32_t, 2> key) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{0xD2511F53} * ctr[0], p1 = uint64_t{0xCD9E8D57} * ctr[2];
    const auto hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const auto hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key = {key[0] + 0x9E3779B9u, key[1] + 0xBB67AE85u};
  }
  return ctr;
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// The documented mapping of element `index` of parameter `name` (docs/decisions.md).
double expected_value(uint64_t seed, const std::string& name, int64_t index, double sigma) {
  const uint64_t h = fnv1a64(name), block = static_cast<uint64_t>(index) / 4;
  const Block x = philox4x32_10({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                 static_cast<uint32_t>(h), static_cast<uint32_t>(h >> 32)},
                                {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  const int pair = static_cast<int>(index % 4) / 2;
  const double u1 = (x[2 * pair] + 0.5) / 4294967296.0, u2 = (x[2 * pair + 1] + 0.5) / 4294967296.0;
  const double r = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * M_PI * u2;
  return sigma * (index % 2 == 0 ? r * std::cos(angle) : r * std::sin(angle));
}

std::vector<double> master_values(const ParamStore& store, const std::string& name) {
  return store.master(store.find(name)).to_vector<double>();
}

}  // namespace

TEST_CASE("the test's Philox4x32-10 reproduces the published known-answer vectors", "[nn][init]") {
  REQUIRE(philox4x32_10({0, 0, 0, 0}, {0, 0}) == Block{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  REQUIRE(philox4x32_10({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}) == Block{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  REQUIRE(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}) ==
          Block{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
  REQUIRE(param_name_hash("") == 0xcbf29ce484222325ull);
  REQUIRE(param_name_hash("a") == 0xaf63dc4c8601ec8cull);  // FNV-1a 64 test vector
}

TEST_CASE("element i of a parameter is the Philox/Box-Muller value of (seed, name, i)", "[nn][init]") {
  const uint64_t seed = GENERATE(uint64_t{0}, uint64_t{1234}, uint64_t{0xfedcba9876543210ull});
  ParamStore store;
  store.add("layers.0.attn.w_qkv", {7, 19}, ParamGroup::dense, ParamKind::weight, ParamInit::normal, 0.02);
  store.add("layers.0.norm", {5}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::ones);
  store.add("layers.1.moe.experts.w_up", {3, 5, 9}, ParamGroup::expert, ParamKind::weight, ParamInit::normal, 0.5);
  store.add("zeros", {6}, ParamGroup::dense, ParamKind::buffer, ParamInit::zeros);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(seed);
  for (const char* name : {"layers.0.attn.w_qkv", "layers.1.moe.experts.w_up"}) {
    const ParamInfo& p = store.info(store.find(name));
    const std::vector<double> got = master_values(store, name);
    for (int64_t i = 0; i < p.numel(); ++i) {
      INFO(name << " element " << i << " seed " << seed);
      REQUIRE(got[static_cast<size_t>(i)] == Approx(expected_value(seed, name, i, p.init_std)).epsilon(1e-13));
      REQUIRE(init_normal_value(seed, param_name_hash(name), i, p.init_std) == got[static_cast<size_t>(i)]);
    }
  }
  REQUIRE(master_values(store, "layers.0.norm") == std::vector<double>(5, 1.0));
  REQUIRE(master_values(store, "zeros") == std::vector<double>(6, 0.0));
  // A different name or seed draws different values.
  REQUIRE(expected_value(seed, "a", 0, 1.0) != expected_value(seed, "b", 0, 1.0));
  REQUIRE(expected_value(seed, "a", 0, 1.0) != expected_value(seed + 1, "a", 0, 1.0));
}

TEST_CASE("row, column and ZeRO-3 shards hold the whole parameter's values", "[nn][init]") {
  const Shape full{8, 12};
  ParamStore whole;
  whole.add("rows", full, ParamGroup::expert, ParamKind::weight);
  whole.add("cols", full, ParamGroup::dense, ParamKind::weight);
  whole.add("glu", full, ParamGroup::dense, ParamKind::weight);
  whole.allocate(Device::cpu(), DType::f32);
  whole.initialize(7);
  for (int rank = 0; rank < 2; ++rank) {
    INFO("rank " << rank << " of 2");
    ParamStore part;
    ParamId rows = part.add_row_shard("rows", full, 4 * rank, 4, SplitOver::ep, ParamGroup::expert, ParamKind::weight);
    ParamId cols = part.add_col_shard("cols", full, 6 * rank, 6, 1, ParamGroup::dense, ParamKind::weight);
    ParamId glu = part.add_col_shard("glu", full, 3 * rank, 3, 2, ParamGroup::dense, ParamKind::weight);
    part.allocate(Device::cpu(), DType::f32);
    part.initialize(7);
    for (ParamId id : {rows, cols, glu}) {
      const ParamInfo& p = part.info(id);
      INFO(p.name);
      const Tensor expected = local_part(p, whole.master(whole.find(p.name)));
      REQUIRE(part.master(id).to_vector<float>() == expected.to_vector<float>());
    }
  }
  // ZeRO-3 shards the master and the compute copy: each rank evaluates only its flat range.
  const int64_t total = whole.group_numel(ParamGroup::dense);
  const std::vector<float> reference = whole.flat_master(ParamGroup::dense).to_vector<float>();
  for (FlatRange range : {FlatRange{0, 50}, FlatRange{50, 131}, FlatRange{131, total}}) {
    ParamStore sharded;
    sharded.add("rows", full, ParamGroup::expert, ParamKind::weight);
    sharded.add("cols", full, ParamGroup::dense, ParamKind::weight);
    sharded.add("glu", full, ParamGroup::dense, ParamKind::weight);
    sharded.allocate(Device::cpu(), DType::f32);
    sharded.shard(ParamGroup::dense, range, true);
    sharded.initialize(7);
    const std::vector<float> got = sharded.master_shard(ParamGroup::dense).to_vector<float>();
    REQUIRE(got == std::vector<float>(reference.begin() + range.begin, reference.begin() + range.end));
  }
}

TEST_CASE("the thread count does not change the initial values", "[nn][init]") {
  auto build = [](int threads) {
    ParamStore store;
    store.add("big", {300, 1001}, ParamGroup::dense, ParamKind::weight);  // many OpenMP chunks
    store.add_col_shard("big_cols", {301, 1000}, 250, 250, 2, ParamGroup::dense, ParamKind::weight);
    store.add("small", {3}, ParamGroup::expert, ParamKind::weight);
    store.allocate(Device::cpu(), DType::f32);
    store.initialize(99, threads);
    return std::vector<std::vector<float>>{store.flat_master(ParamGroup::dense).to_vector<float>(),
                                           store.flat_master(ParamGroup::expert).to_vector<float>()};
  };
  const auto one = build(1);
  for (int threads : {2, 3, 8}) {
    INFO(threads << " threads");
    REQUIRE(build(threads) == one);
  }
}

TEST_CASE("a large normal parameter has the asked mean and standard deviation", "[nn][init]") {
  const double sigma = 0.02;
  const int64_t n = 1 << 21;
  ParamStore store;
  store.add("w", {n}, ParamGroup::dense, ParamKind::weight, ParamInit::normal, sigma);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(2024);
  const std::vector<double> v = master_values(store, "w");
  double sum = 0, sum_sq = 0, max_abs = 0;
  for (double x : v) {
    sum += x;
    sum_sq += x * x;
    max_abs = std::max(max_abs, std::abs(x));
  }
  const double mean = sum / n, sd = std::sqrt(sum_sq / n - mean * mean);
  // 5 standard errors: the mean's is std/sqrt(n), the sample deviation's about std/sqrt(2n).
  REQUIRE(std::abs(mean) < 5 * sigma / std::sqrt(double(n)));
  REQUIRE(std::abs(sd - sigma) < 5 * sigma / std::sqrt(2.0 * n));
  // Normal tails: over 2M draws some exceed 4 sigma, none exceeds Box-Muller's 32-bit bound.
  REQUIRE(max_abs > 4 * sigma);
  REQUIRE(max_abs < std::sqrt(-2.0 * std::log(0.5 / 4294967296.0)) * sigma);
}

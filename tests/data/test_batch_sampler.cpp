// Batch sampling: windows of the shard, determinism, the global batch independent of the rank
// layout (rank slices concatenate to it), uniform offsets, evaluation windows, bad inputs. The
// targets built from the windows are tested with the objective (tests/model/test_objective.cpp).
#include <catch2/catch.hpp>

#include <map>
#include <set>

#include "src/data/batch_sampler.h"
#include "tests/data/data_test_util.h"

using namespace moe::data;
using moe::test::TempDir;

namespace {

// A shard whose token i is (i * 7919) % 60013, so every window is recognisable by its values.
std::string make_shard(const TempDir& dir, const std::string& name, int64_t n) {
  std::vector<uint32_t> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = static_cast<uint32_t>((i * 7919) % 60013);
  const auto path = dir.file(name);
  write_token_shard(path, tokens, TokenDType::u16);
  return path;
}

void append(TokenWindows& into, const TokenWindows& part) {
  into.rows += part.rows;
  into.seq_len = part.seq_len;
  into.tokens.insert(into.tokens.end(), part.tokens.begin(), part.tokens.end());
  into.starts.insert(into.starts.end(), part.starts.begin(), part.starts.end());
}

}  // namespace

TEST_CASE("SplitMix64 matches the reference sequence", "[data][sampler]") {
  // Vigna's splitmix64.c seeded with 1234567.
  SplitMix64 rng(1234567);
  REQUIRE(rng.next() == 6457827717110365317ull);
  REQUIRE(rng.next() == 3203168211198807973ull);
  REQUIRE(rng.next() == 9817491932198370423ull);
  REQUIRE(rng.next() == 4593380528125082431ull);
  REQUIRE(rng.next() == 16408922859458223821ull);
}

TEST_CASE("SplitMix64::below is uniform over small bounds", "[data][sampler]") {
  SplitMix64 rng(42);
  std::vector<int> counts(3, 0);
  const int n = 30000;
  for (int i = 0; i < n; ++i) counts[rng.below(3)] += 1;
  for (int c : counts) REQUIRE(std::abs(c - n / 3) < 490);  // ~6 sigma
  REQUIRE(rng.below(1) == 0);
}

TEST_CASE("each sequence is a window of seq_len + 1 consecutive shard tokens", "[data][sampler]") {
  TempDir dir;
  auto ds = TokenDataset::open(make_shard(dir, "t.tok", 5000));
  BatchSampler sampler(ds, 1234, 6, 33);
  TokenWindows b = sampler.global(3);
  REQUIRE(b.rows == 6);
  REQUIRE(b.seq_len == 33);
  REQUIRE(b.window_length() == 34);
  REQUIRE(b.tokens.size() == 6u * 34u);
  for (int64_t r = 0; r < 6; ++r) {
    const int64_t start = b.starts[static_cast<size_t>(r)];
    REQUIRE(start == sampler.sequence_start(3, r));
    REQUIRE(start >= 0);
    REQUIRE(start + 33 + 1 <= 5000);
    REQUIRE(b.window(r) == b.tokens.data() + r * 34);
    for (int64_t t = 0; t < 34; ++t) {
      REQUIRE(b.tokens[static_cast<size_t>(r * 34 + t)] == static_cast<int32_t>(ds.token(start + t)));
    }
  }
}

TEST_CASE("batches are a function of (seed, step) only", "[data][sampler]") {
  TempDir dir;
  auto ds = TokenDataset::open(make_shard(dir, "t.tok", 100000));
  BatchSampler a(ds, 77, 16, 64);
  BatchSampler b(ds, 77, 16, 64);
  // Out-of-order and repeated calls give the same batches: no hidden generator state.
  TokenWindows b5 = b.global(5);
  TokenWindows b0 = b.global(0);
  REQUIRE(a.global(0).tokens == b0.tokens);
  REQUIRE(a.global(5).tokens == b5.tokens);
  REQUIRE(a.global(5).tokens == b.global(5).tokens);
  // Different steps and seeds draw different windows.
  REQUIRE(a.global(0).starts != a.global(1).starts);
  BatchSampler other_seed(ds, 78, 16, 64);
  REQUIRE(other_seed.global(0).starts != a.global(0).starts);
  // A larger global batch extends, never reshuffles, the smaller one's sequences.
  BatchSampler wider(ds, 77, 32, 64);
  TokenWindows wide = wider.global(5);
  REQUIRE(std::vector<int64_t>(wide.starts.begin(), wide.starts.begin() + 16) == b5.starts);
}

TEST_CASE("concatenated rank slices equal the one-rank global batch", "[data][sampler]") {
  TempDir dir;
  auto ds = TokenDataset::open(make_shard(dir, "t.tok", 20000));
  const int64_t global_batch = 8, seq_len = 16;
  BatchSampler sampler(ds, 2024, global_batch, seq_len);
  struct Layout {
    int64_t ranks, micro, accum;
  };
  const std::vector<Layout> layouts = {{1, 8, 1}, {1, 1, 8}, {1, 2, 4}, {2, 4, 1}, {2, 2, 2}, {4, 1, 2}, {8, 1, 1}};
  for (int64_t step : {0, 1, 17}) {
    const TokenWindows reference = sampler.global(step);
    for (const auto& layout : layouts) {
      TokenWindows joined;
      // Visit ranks in reverse to show no rank depends on another having drawn first.
      std::vector<TokenWindows> per_rank(static_cast<size_t>(layout.ranks));
      for (int64_t r = layout.ranks - 1; r >= 0; --r) {
        DataParallelSlice slice{r, layout.ranks, layout.micro, layout.accum};
        for (int64_t k = 0; k < layout.accum; ++k) {
          TokenWindows micro = sampler.micro_batch(step, slice, k);
          REQUIRE(micro.rows == layout.micro);
          append(per_rank[static_cast<size_t>(r)], micro);
        }
      }
      for (const auto& part : per_rank) append(joined, part);
      INFO("step " << step << " ranks " << layout.ranks << " micro " << layout.micro << " accum " << layout.accum);
      REQUIRE(joined.rows == global_batch);
      REQUIRE(joined.tokens == reference.tokens);
      REQUIRE(joined.starts == reference.starts);
    }
  }
  // Rank 1 of 2 with micro 2, accum 2 takes global sequences 4..7, micro-batch 1 = sequences 6, 7.
  TokenWindows m = sampler.micro_batch(0, DataParallelSlice{1, 2, 2, 2}, 1);
  REQUIRE(m.starts == std::vector<int64_t>{sampler.sequence_start(0, 6), sampler.sequence_start(0, 7)});
}

TEST_CASE("start offsets cover every valid position uniformly", "[data][sampler]") {
  TempDir dir;
  // 20 tokens, seq_len 10: starts 0..9 are valid (the last window ends at token 19).
  auto ds = TokenDataset::open(make_shard(dir, "t.tok", 20));
  BatchSampler sampler(ds, 5, 4, 10);
  std::map<int64_t, int> counts;
  const int steps = 5000;
  for (int step = 0; step < steps; ++step) {
    for (int64_t j = 0; j < 4; ++j) counts[sampler.sequence_start(step, j)] += 1;
  }
  REQUIRE(counts.size() == 10u);
  REQUIRE(counts.begin()->first == 0);
  REQUIRE(counts.rbegin()->first == 9);
  for (auto [start, c] : counts) REQUIRE(std::abs(c - 2000) < 270);  // ~6 sigma for p = 0.1
  // The smallest usable shard has exactly seq_len + 1 tokens and one possible window.
  auto tiny = TokenDataset::open(make_shard(dir, "tiny.tok", 11));
  BatchSampler one(tiny, 5, 3, 10);
  REQUIRE(one.global(9).starts == std::vector<int64_t>{0, 0, 0});
}

TEST_CASE("bad sampler inputs name the file and the numbers", "[data][sampler][errors]") {
  TempDir dir;
  const auto path = make_shard(dir, "short.tok", 64);
  auto ds = TokenDataset::open(path);
  REQUIRE_THROWS_WITH(BatchSampler(ds, 1, 4, 64),
                      Catch::Contains(path) && Catch::Contains("has 64 tokens, fewer than seq_len + 1 = 65"));
  REQUIRE_THROWS_WITH(EvalIterator(ds, 4, 100),
                      Catch::Contains(path) && Catch::Contains("has 64 tokens, fewer than seq_len + 1 = 101"));
  BatchSampler sampler(ds, 1, 8, 16);
  REQUIRE_THROWS_WITH(sampler.micro_batch(0, DataParallelSlice{0, 2, 2, 1}, 0),
                      Catch::Contains("data-parallel ranks (2) x micro_batch (2) x grad_accum (1) = 4 must equal "
                                      "the global batch 8"));
  REQUIRE_THROWS_WITH(sampler.micro_batch(0, DataParallelSlice{2, 2, 2, 2}, 0),
                      Catch::Contains("rank 2 out of range [0, 2)"));
  REQUIRE_THROWS_WITH(sampler.micro_batch(0, DataParallelSlice{0, 2, 2, 2}, 2),
                      Catch::Contains("micro-batch 2 out of range [0, 2)"));
  REQUIRE_THROWS_WITH(BatchSampler(ds, 1, 0, 16), Catch::Contains("global batch must be positive"));
}

TEST_CASE("evaluation windows are fixed, non-overlapping and split evenly over ranks", "[data][eval]") {
  TempDir dir;
  // 1001 tokens, seq_len 10: 100 windows of 11 tokens, the last one ends at token 1000.
  auto ds = TokenDataset::open(make_shard(dir, "val.tok", 1001));
  EvalIterator it(ds, 7, 10);
  REQUIRE(it.num_windows() == 100);
  REQUIRE(it.num_batches() == 15);
  std::vector<int64_t> starts;
  TokenWindows b;
  int batches = 0;
  while (it.next(b)) {
    ++batches;
    REQUIRE(b.rows == (batches < 15 ? 7 : 2));
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t s = b.starts[static_cast<size_t>(r)];
      starts.push_back(s);
      for (int64_t t = 0; t < 11; ++t) {
        REQUIRE(b.tokens[static_cast<size_t>(r * 11 + t)] == static_cast<int32_t>(ds.token(s + t)));
      }
    }
  }
  REQUIRE(batches == 15);
  REQUIRE(starts.size() == 100u);
  for (size_t w = 0; w < starts.size(); ++w) REQUIRE(starts[w] == static_cast<int64_t>(w) * 10);
  // A second pass after reset is identical.
  it.reset();
  REQUIRE(it.next(b));
  REQUIRE(b.starts.front() == 0);

  // max_windows caps the pass; ranks stride over windows and together cover them once.
  std::set<int64_t> seen;
  int64_t per_rank = -1;
  for (int64_t r = 0; r < 3; ++r) {
    EvalIterator part(ds, 4, 10, 50, r, 3);
    REQUIRE(part.num_windows() == 48);  // 50 cut to a multiple of 3 ranks
    if (per_rank < 0) per_rank = part.windows_per_rank();
    REQUIRE(part.windows_per_rank() == per_rank);
    while (part.next(b)) {
      for (int64_t s : b.starts) REQUIRE(seen.insert(s).second);
    }
  }
  REQUIRE(seen.size() == 48u);
  REQUIRE(*seen.rbegin() == 47 * 10);
}

// Splits and the epoch sampler: shards from glob patterns, bad data named by its key (truncated
// shards, ids beyond the vocabulary, empty datasets), every window once per epoch, blending
// proportions measured over many batches, and the exact order of a restarted sampler.
#include <catch2/catch.hpp>

#include <map>
#include <set>

#include "src/data/epoch_sampler.h"
#include "tests/data/data_test_util.h"

using namespace moe::data;
using Catch::Contains;
using moe::test::TempDir;

namespace {

// A shard whose tokens all lie in [base, base + 100): the dataset of a window shows in its values.
std::string make_shard(const TempDir& dir, const std::string& name, int64_t n, uint32_t base) {
  std::vector<uint32_t> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = base + static_cast<uint32_t>((i * 37) % 100);
  const auto path = dir.file(name);
  write_token_shard(path, tokens, TokenDType::u16);
  return path;
}

// Three datasets told apart by their token ranges: a (2 shards), b (1), c (3, one too short).
struct Blended {
  TempDir dir;
  TokenSplit split;
  Blended(double wa, double wb, double wc) : split(open_split(dir, wa, wb, wc)) {}
  static TokenSplit open_split(const TempDir& dir, double wa, double wb, double wc) {
    make_shard(dir, "a_000.tok", 900, 0);
    make_shard(dir, "a_001.tok", 500, 0);
    make_shard(dir, "b.tok", 700, 1000);
    make_shard(dir, "c_0.tok", 400, 2000);
    make_shard(dir, "c_1.tok", 10, 2000);  // shorter than a window: no sample
    make_shard(dir, "c_2.tok", 333, 2000);
    return TokenSplit::open({{"data.train[0]", {dir.file("a_*.tok")}, wa},
                             {"data.train[1]", {dir.file("b.tok")}, wb},
                             {"data.train[2]", {dir.file("c_[0-9].tok")}, wc}});
  }
};

int64_t dataset_of(const int32_t* window) { return window[0] / 1000; }

}  // namespace

TEST_CASE("glob patterns expand to their files sorted by name; plain paths stay", "[data][split]") {
  TempDir dir;
  for (const char* name : {"s_10.tok", "s_02.tok", "s_1.tok", "other.tok"}) make_shard(dir, name, 50, 0);
  const auto paths = expand_shard_paths("data.train[0]", {dir.file("s_*.tok"), dir.file("other.tok")});
  REQUIRE(paths == std::vector<std::string>{dir.file("s_02.tok"), dir.file("s_1.tok"), dir.file("s_10.tok"),
                                            dir.file("other.tok")});
  REQUIRE_THROWS_WITH(expand_shard_paths("data.train[2]", {dir.file("x_*.tok")}),
                      Contains("data.train[2]: '" + dir.file("x_*.tok") + "' matches no file"));
  const TokenSplit split = TokenSplit::open({{"data.val[0]", {dir.file("s_*.tok")}, 1.0}});
  REQUIRE(split.shards().size() == 3);
  REQUIRE(split.num_tokens() == 150);
}

TEST_CASE("bad shards are named with their dataset's key", "[data][split][errors]") {
  TempDir dir;
  const std::string good = make_shard(dir, "good.tok", 300, 0);
  const std::string cut = make_shard(dir, "cut.tok", 300, 0);
  std::string bytes = moe::test::read_bytes(cut);
  moe::test::write_bytes(cut, bytes.substr(0, bytes.size() - 10));  // a truncated shard
  REQUIRE_THROWS_WITH(TokenSplit::open({{"data.train[0]", {good}, 1.0}, {"data.train[1]", {good, cut}, 1.0}}),
                      Contains("data.train[1] " + cut + ": truncated native token shard: header says 300 tokens") &&
                          Contains("but only 590 bytes follow the header"));
  REQUIRE_THROWS_WITH(TokenSplit::open({{"data.val[0]", {dir.file("missing.tok")}, 1.0}}),
                      Contains("data.val[0] " + dir.file("missing.tok")));
  // Ids beyond the vocabulary: the key, the file and the first bad position.
  const TokenSplit split = TokenSplit::open({{"data.train[0]", {good}, 1.0}, {"data.train[1]", {good}, 1.0}});
  REQUIRE_NOTHROW(split.check_ids_below(100));
  REQUIRE_THROWS_WITH(split.check_ids_below(99), Contains("data.train[0] " + good + ": token id 99 at position ") &&
                                                     Contains("is outside the vocabulary (model.vocab_size = 99)"));
}

TEST_CASE("a dataset without one training window is an error naming it", "[data][split][errors]") {
  TempDir dir;
  const std::string long_shard = make_shard(dir, "long.tok", 300, 0);
  const std::string short_a = make_shard(dir, "short_a.tok", 64, 0), short_b = make_shard(dir, "short_b.tok", 10, 0);
  const TokenSplit one = TokenSplit::open({{"data.train[0]", {long_shard}, 1.0}, {"data.train[1]", {short_a}, 1.0}});
  REQUIRE_THROWS_WITH(EpochSampler(one, 1, 4, 64),
                      Contains("data.train[1] " + short_a + ": has 64 tokens, fewer than seq_len + 1 = 65"));
  const TokenSplit two = TokenSplit::open({{"data.train[0]", {long_shard}, 1.0},
                                           {"data.train[1]", {short_a, short_b}, 1.0}});
  REQUIRE_THROWS_WITH(EpochSampler(two, 1, 4, 64),
                      Contains("data.train[1]: its 2 shards (" + short_a + ", ...) hold 74 tokens, but none has the "
                               "seq_len + 1 = 65 tokens of one training sequence: the dataset is empty"));
  REQUIRE_NOTHROW(EpochSampler(one, 1, 4, 63));  // 64 tokens hold one window of 63 + 1
}

TEST_CASE("each epoch reads every window of a dataset once, in a fresh order", "[data][epochs]") {
  Blended b(1.0, 1.0, 1.0);
  const int64_t seq = 32;
  const EpochSampler sampler(b.split, 99, 8, seq);
  // a: (900 - 1) / 32 + (500 - 1) / 32 = 28 + 15 windows; c: 12 + 0 + 10.
  REQUIRE(sampler.num_samples(0) == 43);
  REQUIRE(sampler.num_samples(1) == 21);
  REQUIRE(sampler.num_samples(2) == 22);
  std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> order;  // (dataset, epoch) -> windows
  for (int64_t g = 0; g < 3 * 43 * 3; ++g) {
    const EpochSampler::Location at = sampler.locate(g);
    order[{at.dataset, at.epoch}].push_back(at.sample);
    const auto& shard = b.split.datasets()[static_cast<size_t>(at.dataset)].shards[static_cast<size_t>(at.shard)];
    REQUIRE(at.start % seq == 0);
    REQUIRE(at.start + seq + 1 <= shard.size());
  }
  for (int64_t d = 0; d < 3; ++d) {
    for (int64_t e = 0; e < 2; ++e) {
      INFO("dataset " << d << " epoch " << e);
      std::vector<int64_t> windows = order[{d, e}];
      REQUIRE(static_cast<int64_t>(windows.size()) == sampler.num_samples(d));
      REQUIRE(std::set<int64_t>(windows.begin(), windows.end()).size() == windows.size());
    }
    REQUIRE(order[{d, 0}] != order[{d, 1}]);  // reshuffled every epoch
  }
}

TEST_CASE("windows hold the shard tokens the sampler locates", "[data][epochs]") {
  Blended b(0.5, 0.3, 0.2);
  const EpochSampler sampler(b.split, 5, 6, 20);
  const TokenWindows w = sampler.sequences(3, 1, 4);
  REQUIRE(w.rows == 4);
  for (int64_t r = 0; r < 4; ++r) {
    const EpochSampler::Location at = sampler.locate(3 * 6 + 1 + r);
    const auto& shard = b.split.datasets()[static_cast<size_t>(at.dataset)].shards[static_cast<size_t>(at.shard)];
    REQUIRE(w.starts[static_cast<size_t>(r)] == at.start);
    for (int64_t t = 0; t < 21; ++t) {
      REQUIRE(w.window(r)[t] == static_cast<int32_t>(shard.token(at.start + t)));
    }
  }
}

TEST_CASE("blended batches follow the weights, measured over many steps", "[data][epochs][blend]") {
  Blended b(0.6, 0.3, 0.1);
  const EpochSampler sampler(b.split, 1234, 16, 16);
  std::vector<int64_t> counts(3, 0);
  const int64_t steps = 500;
  for (int64_t step = 0; step < steps; ++step) {
    const TokenWindows w = sampler.global(step);
    for (int64_t r = 0; r < w.rows; ++r) counts[static_cast<size_t>(dataset_of(w.window(r)))] += 1;
  }
  const double total = 16.0 * steps;  // 8000 samples: several epochs of every dataset
  REQUIRE(std::abs(counts[0] - 0.6 * total) <= 2.0);
  REQUIRE(std::abs(counts[1] - 0.3 * total) <= 2.0);
  REQUIRE(std::abs(counts[2] - 0.1 * total) <= 2.0);
  const std::vector<double> epochs = sampler.epochs_after(8000);
  REQUIRE(epochs[0] == Approx(4800.0 / sampler.num_samples(0)).margin(2.0 / sampler.num_samples(0)));
}

TEST_CASE("a restarted sampler continues the sample order exactly", "[data][epochs][restart]") {
  Blended b(0.6, 0.3, 0.1);
  const EpochSampler run(b.split, 77, 12, 24);
  std::vector<TokenWindows> straight;
  for (int64_t step = 0; step < 40; ++step) straight.push_back(run.global(step));
  // A new sampler over a new split of the same files (a new process after a checkpoint at step
  // 25) draws steps 25.. without drawing the ones before.
  const TokenSplit reopened = Blended::open_split(b.dir, 0.6, 0.3, 0.1);
  const EpochSampler resumed(reopened, 77, 12, 24);
  for (int64_t step = 39; step >= 25; --step) {  // any order: no hidden state
    INFO("step " << step);
    REQUIRE(resumed.global(step).tokens == straight[static_cast<size_t>(step)].tokens);
  }
  // Data-parallel slices concatenate to the global batch: 3 ranks x 2 micro-batches x 2 sequences.
  TokenWindows joined;
  for (int64_t rank = 0; rank < 3; ++rank) {
    for (int64_t micro = 0; micro < 2; ++micro) {
      const TokenWindows part = resumed.micro_batch(31, {rank, 3, 2, 2}, micro);
      joined.tokens.insert(joined.tokens.end(), part.tokens.begin(), part.tokens.end());
    }
  }
  REQUIRE(joined.tokens == straight[31].tokens);
  const EpochSampler other_seed(reopened, 78, 12, 24);
  REQUIRE(other_seed.global(30).tokens != straight[30].tokens);
}

TEST_CASE("evaluation windows run over several shards in order", "[data][eval]") {
  TempDir dir;
  const auto a = TokenDataset::open(make_shard(dir, "a.tok", 41, 0));     // 4 windows of 10
  const auto s = TokenDataset::open(make_shard(dir, "s.tok", 5, 500));    // none
  const auto c = TokenDataset::open(make_shard(dir, "c.tok", 25, 1000));  // 2 windows
  EvalIterator it({&a, &s, &c}, 4, 10);
  REQUIRE(it.num_windows() == 6);
  TokenWindows w;
  std::vector<std::pair<int32_t, int64_t>> seen;  // (first token, start)
  while (it.next(w)) {
    for (int64_t r = 0; r < w.rows; ++r) seen.emplace_back(w.window(r)[0], w.starts[static_cast<size_t>(r)]);
  }
  REQUIRE(seen.size() == 6);
  for (int64_t k = 0; k < 4; ++k) {
    REQUIRE(seen[static_cast<size_t>(k)] == std::make_pair(static_cast<int32_t>(a.token(k * 10)), k * 10));
  }
  REQUIRE(seen[4] == std::make_pair(static_cast<int32_t>(c.token(0)), int64_t{0}));
  REQUIRE(seen[5] == std::make_pair(static_cast<int32_t>(c.token(10)), int64_t{10}));
  REQUIRE_THROWS_WITH(EvalIterator({&s, &s}, 4, 10),
                      Contains("2 shards (" + s.path() + ", ...) hold 10 tokens but no shard has seq_len + 1 = 11"));
}

// HashRouter: every kind's choice exact on hand examples, route() outputs on the CPU (ids,
// unit weights in the accum dtype, no scores), per-layer seeds, and each error message.
#include <catch2/catch.hpp>

#include <algorithm>
#include <memory>

#include "routing/hash_router.h"
#include "routing/hash_table.h"
#include "src/io/safetensors.h"
#include "tests/data/data_test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
using test::TempDir;

// A hand table over 6 tokens and 3 experts, saved as a `kind` table file.
const std::vector<int32_t> k_hand_table = {2, 0, 1, 1, 0, 2};
std::string save_hand_table(const TempDir& dir, HashKind kind, const std::string& name = "hand.safetensors") {
  HashTable t{kind, 3, 6, 0, "hand", k_hand_table};
  save_hash_table(dir.file(name), t);
  // (This test also links write/read_safetensors directly: libmoe_routing needs them from
  // libmoe_model, which the static link line scans before it.)
  REQUIRE(read_safetensors_header(dir.file(name)).metadata.at("kind") == hash_kind_name(kind));
  return dir.file(name);
}

HashRouterOptions options(const std::string& kind, int64_t experts, int64_t vocab, const std::string& path = "") {
  HashRouterOptions o;
  o.kind = hash_kind_from_name(kind);
  o.num_experts = experts;
  o.vocab_size = vocab;
  o.table_path = path;
  o.seed = 17;
  return o;
}

// Two sequences of four tokens.
const std::vector<int32_t> k_tokens = {3, 0, 5, 5, 1, 4, 2, 0};
const std::vector<int32_t> k_targets = {0, 5, 5, -1, 4, 2, 0, 3};

RouteInputs inputs(const std::vector<int32_t>* tokens, const std::vector<int32_t>* targets, int64_t seq_len) {
  RouteInputs in;
  in.tokens = tokens;
  in.targets = targets;
  in.seq_len = seq_len;
  return in;
}

TEST_CASE("hash router: token-table kinds route by table[token]", "[hash]") {
  TempDir dir;
  for (HashKind kind : {HashKind::balanced, HashKind::clustering, HashKind::dispersed}) {
    HashRouter r(options(hash_kind_name(kind), 3, 6, save_hand_table(dir, kind)));
    REQUIRE(r.name() == std::string("hash-") + hash_kind_name(kind));
    REQUIRE(r.expert_ids(8, inputs(&k_tokens, nullptr, 4)) == std::vector<int32_t>{1, 2, 2, 2, 0, 0, 1, 2});
  }
  HashRouter random(options("random", 5, 100));
  HashTable expected = build_random_hash_table(100, 5, 17);
  std::vector<int32_t> tokens = {99, 0, 42, 42, 7};
  auto ids = random.expert_ids(5, inputs(&tokens, nullptr, 5));
  for (size_t t = 0; t < tokens.size(); ++t) REQUIRE(ids[t] == expected.table[static_cast<size_t>(tokens[t])]);
}

TEST_CASE("hash router: previous-token and oracle choices on a hand example", "[hash]") {
  TempDir dir;
  const std::string path = save_hand_table(dir, HashKind::balanced);
  // prev of each row (the row's own token at a sequence start): 3 3 0 5 | 1 1 4 2
  HashRouter previous(options("previous_token", 3, 6, path));
  REQUIRE(previous.name() == "hash-previous_token");
  REQUIRE(previous.expert_ids(8, inputs(&k_tokens, nullptr, 4)) == std::vector<int32_t>{1, 1, 2, 2, 0, 0, 0, 1});
  // targets 0 5 5 (-1: token 5) | 4 2 0 3
  auto o = options("oracle", 3, 6, path);
  o.allow_oracle = true;
  HashRouter oracle(o);
  REQUIRE(oracle.expert_ids(8, inputs(&k_tokens, &k_targets, 4)) == std::vector<int32_t>{2, 2, 2, 2, 0, 1, 2, 1});
  // Without a file both look tokens up in the seeded random table.
  HashRouter previous_random(options("previous_token", 3, 6));
  HashTable random = build_random_hash_table(6, 3, 17);
  std::vector<int32_t> want;
  for (int32_t p : {3, 3, 0, 5, 1, 1, 4, 2}) want.push_back(random.table[static_cast<size_t>(p)]);
  REQUIRE(previous_random.expert_ids(8, inputs(&k_tokens, nullptr, 4)) == want);
}

TEST_CASE("hash router: bigram hash of (previous, current) with a sentinel at sequence starts", "[hash]") {
  HashRouter r(options("bigram", 7, 6));
  REQUIRE(r.table() == nullptr);
  auto ids = r.expert_ids(8, inputs(&k_tokens, nullptr, 4));
  const uint64_t sentinel = 0xFFFFFFFFull;
  for (size_t t = 0; t < k_tokens.size(); ++t) {
    uint64_t prev = t % 4 == 0 ? sentinel : static_cast<uint64_t>(k_tokens[t - 1]);
    uint64_t key = (prev << 32) | static_cast<uint64_t>(k_tokens[t]);
    INFO("row " << t);
    REQUIRE(ids[t] == static_cast<int32_t>(hash_mix64(key ^ hash_mix64(17 + 0x9E3779B97F4A7C15ull)) % 7));
  }
  // The same pair routes the same way anywhere; another seed routes some pairs elsewhere.
  std::vector<int32_t> repeated = {1, 2, 1, 2, 1, 2, 4, 4};
  auto rep = r.expert_ids(8, inputs(&repeated, nullptr, 8));
  REQUIRE(rep[2] == rep[4]);
  REQUIRE(rep[1] == rep[3]);
  REQUIRE(rep[3] == rep[5]);
  std::vector<int32_t> many(64);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<int32_t>(i % 6);
  auto o = options("bigram", 7, 6);
  o.seed = 18;
  REQUIRE(HashRouter(o).expert_ids(64, inputs(&many, nullptr, 16)) != r.expert_ids(64, inputs(&many, nullptr, 16)));
}

TEST_CASE("hash router: position hash is a seeded permutation of positions mod E", "[hash]") {
  const int64_t seq = 12, experts = 4;
  HashRouter r(options("position", experts, 6));
  // Fisher-Yates as documented: for i = S-1..1 swap perm[i], perm[hash_keyed(seed, i) mod (i+1)].
  std::vector<int64_t> perm(seq);
  for (int64_t i = 0; i < seq; ++i) perm[i] = i;
  for (int64_t i = seq - 1; i >= 1; --i) std::swap(perm[i], perm[hash_keyed(17, static_cast<uint64_t>(i)) % (i + 1)]);
  std::vector<int32_t> want;
  for (int64_t p : perm) want.push_back(static_cast<int32_t>(p % experts));
  REQUIRE(r.position_experts(seq) == want);
  auto counts = std::vector<int>(experts, 0);
  for (int32_t e : want) ++counts[e];
  REQUIRE(counts == std::vector<int>{3, 3, 3, 3});
  // Rows are whole sequences: no tokens needed, row t routes by position t mod seq_len.
  auto ids = r.expert_ids(3 * seq, inputs(nullptr, nullptr, seq));
  for (int64_t t = 0; t < 3 * seq; ++t) REQUIRE(ids[t] == want[t % seq]);
}

TEST_CASE("hash router: one hash for all layers, or a different one per layer", "[hash]") {
  auto o = options("random", 8, 500);
  o.layer_index = 0;
  HashRouter shared0(o);
  o.layer_index = 3;
  HashRouter shared3(o);
  REQUIRE(shared0.seed() == 17);
  REQUIRE(shared0.table()->table == shared3.table()->table);
  o.per_layer = true;
  HashRouter own3(o);
  o.layer_index = 4;
  HashRouter own4(o);
  REQUIRE(own3.seed() == hash_layer_seed(17, 3));
  REQUIRE(own3.table()->table == build_random_hash_table(500, 8, hash_layer_seed(17, 3)).table);
  REQUIRE(own3.table()->table != own4.table()->table);
  REQUIRE(own3.table()->table != shared3.table()->table);
  auto p = options("position", 8, 500);
  p.per_layer = true;
  p.layer_index = 1;
  HashRouter pos1(p);
  p.layer_index = 2;
  REQUIRE(HashRouter(p).position_experts(64) != pos1.position_experts(64));
}

TEST_CASE("hash router: route() uploads ids [T,1] and unit weights in the accum dtype", "[hash]") {
  TempDir dir;
  HashRouter r(options("balanced", 3, 6, save_hand_table(dir, HashKind::balanced)));
  REQUIRE(r.num_experts() == 3);
  REQUIRE(r.slots_per_token() == 1);
  RouteInputs in = inputs(&k_tokens, nullptr, 4);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    Tensor x = test::random_tensor({8, 5}, dtype, 3);
    RouterSaved saved;
    Routing out = r.route(x, in, saved);
    INFO(dtype_name(dtype));
    REQUIRE(out.ids.dtype() == DType::i32);
    REQUIRE(out.ids.shape() == Shape{8, 1});
    REQUIRE(out.ids.to_vector<int32_t>() == std::vector<int32_t>{1, 2, 2, 2, 0, 0, 1, 2});
    REQUIRE(out.weights.dtype() == (dtype == DType::f64 ? DType::f64 : DType::f32));
    REQUIRE(out.weights.shape() == Shape{8, 1});
    REQUIRE(out.weights.to_vector<double>() == std::vector<double>(8, 1.0));
    REQUIRE_FALSE(out.scores.defined());
    REQUIRE_FALSE(out.logits.defined());
    REQUIRE(saved.routing.ids.to_vector<int32_t>() == out.ids.to_vector<int32_t>());
    // No parameters and constant weights: backward leaves dx alone.
    Tensor dx = test::random_tensor({8, 5}, dtype, 4);
    auto before = dx.to_vector<double>();
    RouterGrads grads;
    grads.dweights = test::random_tensor({8, 1}, out.weights.dtype(), 5);
    r.backward(saved, grads, dx);
    REQUIRE(dx.to_vector<double>() == before);
  }
  Tensor empty = Tensor::empty({0, 5}, DType::f32);
  RouterSaved saved;
  std::vector<int32_t> none;
  REQUIRE(r.route(empty, inputs(&none, nullptr, 4), saved).ids.shape() == Shape{0, 1});
}

TEST_CASE("hash router: error messages", "[hash]") {
  TempDir dir;
  HashTable big = build_random_hash_table(32000, 4, 1);
  const std::string big_path = dir.file("big.safetensors");
  save_hash_table(big_path, big);
  REQUIRE_THROWS_WITH(HashRouter(options("random", 4, 4096, big_path)),
                      Contains("hash table " + big_path +
                               " is for a vocabulary of 32000 tokens but model.vocab_size is 4096"));
  REQUIRE_THROWS_WITH(HashRouter(options("random", 8, 32000, big_path)),
                      Contains("routes to 4 experts but this MoE layer has 8"));

  const std::string hand = save_hand_table(dir, HashKind::balanced);
  HashRouter r(options("balanced", 3, 6, hand));
  std::vector<int32_t> outside = {1, 2, 6, 0};
  REQUIRE_THROWS_WITH(r.expert_ids(4, inputs(&outside, nullptr, 4)),
                      Contains("hash-balanced: token id 6 at row 2 is outside the hash table (vocabulary of 6 tokens)"));
  std::vector<int32_t> negative = {1, -3, 2, 0};
  REQUIRE_THROWS_WITH(r.expert_ids(4, inputs(&negative, nullptr, 4)), Contains("token id -3 at row 1"));
  REQUIRE_THROWS_WITH(HashRouter(options("bigram", 3, 6)).expert_ids(4, inputs(&outside, nullptr, 4)),
                      Contains("token id 6 at row 2 is outside"));
  REQUIRE_THROWS_WITH(r.expert_ids(4, inputs(nullptr, nullptr, 4)),
                      Contains("hash-balanced needs the tokens of the batch"));
  REQUIRE_THROWS_WITH(r.expert_ids(5, inputs(&outside, nullptr, 5)), Contains("hash-balanced: 4 tokens for 5 rows"));

  REQUIRE_THROWS_WITH(HashRouter(options("oracle", 3, 6, hand)),
                      Contains("the future-token oracle hash routes on the target token and leaks the answer: set "
                               "moe.hash_allow_oracle = true to run it as an upper-bound probe"));
  auto o = options("oracle", 3, 6, hand);
  o.allow_oracle = true;
  HashRouter oracle(o);
  REQUIRE_THROWS_WITH(oracle.expert_ids(8, inputs(&k_tokens, nullptr, 4)),
                      Contains("the future-token oracle hash routes on the target tokens, but this forward pass has none"));
  std::vector<int32_t> bad_target = {0, 7, 1, 1, 0, 0, 0, 0};
  REQUIRE_THROWS_WITH(oracle.expert_ids(8, inputs(&k_tokens, &bad_target, 4)), Contains("token id 7 at row 1"));

  REQUIRE_THROWS_WITH(HashRouter(options("balanced", 3, 6)),
                      Contains("moe.hash_kind = \"balanced\" needs moe.hash_table (build it with `moe hash-table"));
  REQUIRE_THROWS_WITH(HashRouter(options("clustering", 3, 6, hand)),
                      Contains("was built as 'balanced' but moe.hash_kind is \"clustering\""));
  REQUIRE_THROWS_WITH(HashRouter(options("bigram", 3, 6, hand)),
                      Contains("moe.hash_kind = \"bigram\" uses no token table, but moe.hash_table"));
  auto per_layer = options("balanced", 3, 6, hand);
  per_layer.per_layer = true;
  REQUIRE_THROWS_WITH(HashRouter(per_layer), Contains("leave moe.hash_per_layer = false"));
  REQUIRE_THROWS_WITH(HashRouter(options("position", 4, 6)).expert_ids(10, inputs(nullptr, nullptr, 4)),
                      Contains("hash-position needs whole sequences: 10 rows are not a multiple of seq_len 4"));
  REQUIRE_THROWS_WITH(HashRouter(options("random", 4, 6, dir.file("nope.safetensors"))),
                      Contains("does not exist (build it with `moe hash-table`)"));
}

TEST_CASE("hash router: a shared in-memory table", "[hash]") {
  auto table = std::make_shared<const HashTable>(HashTable{HashKind::dispersed, 3, 6, 0, "mem", k_hand_table});
  HashRouter a(options("dispersed", 3, 6, "tables/dispersed.safetensors"), table);
  REQUIRE(a.table() == table.get());
  REQUIRE(a.expert_ids(8, inputs(&k_tokens, nullptr, 4)) == std::vector<int32_t>{1, 2, 2, 2, 0, 0, 1, 2});
  REQUIRE_THROWS_WITH(HashRouter(options("dispersed", 3, 7, "tables/dispersed.safetensors"), table),
                      Contains("hash table tables/dispersed.safetensors is for a vocabulary of 6 tokens"));
}

}  // namespace
}  // namespace moe

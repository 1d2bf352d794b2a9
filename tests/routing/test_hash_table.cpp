// Hash-routing tables: the seeded mix, random / balanced / clustering / dispersed builders
// (exact on hand examples, reproducible from seed and data), the file format, `moe hash-table`.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>

#include "routing/hash_clustering.h"
#include "routing/hash_table.h"
#include "src/data/token_shard.h"
#include "src/io/safetensors.h"
#include "tests/data/data_test_util.h"
#include "tests/routing/hash_test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
using test::TempDir;
using test::Blobs;
using test::make_blobs;
using test::write_embedding_checkpoint;

// Labels equal up to renaming the clusters.
bool same_partition(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  if (a.size() != b.size()) return false;
  std::map<int32_t, int32_t> ab, ba;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ab.emplace(a[i], b[i]).first->second != b[i]) return false;
    if (ba.emplace(b[i], a[i]).first->second != a[i]) return false;
  }
  return true;
}

std::vector<int64_t> per_expert(const std::vector<int32_t>& table, int64_t experts) {
  std::vector<int64_t> n(static_cast<size_t>(experts), 0);
  for (int32_t e : table) ++n.at(static_cast<size_t>(e));
  return n;
}

TEST_CASE("hash kinds: names round-trip and unknown names fail", "[hash]") {
  for (HashKind k : {HashKind::random, HashKind::balanced, HashKind::clustering, HashKind::dispersed,
                     HashKind::position, HashKind::bigram, HashKind::previous_token, HashKind::oracle}) {
    REQUIRE(hash_kind_from_name(hash_kind_name(k)) == k);
  }
  REQUIRE(hash_kind_needs_table_file(HashKind::balanced));
  REQUIRE_FALSE(hash_kind_needs_table_file(HashKind::random));
  REQUIRE_FALSE(hash_kind_uses_token_table(HashKind::bigram));
  REQUIRE_THROWS_WITH(hash_kind_from_name("previous"), Contains("moe.hash_kind = \"previous\" is not a hash kind") &&
                                                       Contains("previous_token"));
}

TEST_CASE("hash mix: splitmix64's finaliser, keyed and per layer", "[hash]") {
  // The first two outputs of the reference splitmix64 generator seeded with 0.
  REQUIRE(hash_mix64(0x9E3779B97F4A7C15ull) == 0xE220A8397B1DCDAFull);
  REQUIRE(hash_mix64(2 * 0x9E3779B97F4A7C15ull) == 0x6E789E6AA1B965F4ull);
  REQUIRE(hash_keyed(7, 11) == hash_mix64(11 ^ hash_mix64(7 + 0x9E3779B97F4A7C15ull)));
  REQUIRE(hash_keyed(7, 11) != hash_keyed(8, 11));
  REQUIRE(hash_layer_seed(5, 0) != hash_layer_seed(5, 1));
  REQUIRE(hash_layer_seed(5, 3) == hash_keyed(5, 0x4C41594552000003ull));
  for (uint64_t k = 0; k < 1000; ++k) {
    double u = hash_uniform(9, k);
    REQUIRE((u >= 0.0 && u < 1.0));
  }
}

TEST_CASE("random table: the documented formula, uniform, reproducible from its seed", "[hash]") {
  const int64_t vocab = 4096, experts = 8;
  HashTable a = build_random_hash_table(vocab, experts, 42);
  REQUIRE(a.kind == HashKind::random);
  REQUIRE(a.table.size() == static_cast<size_t>(vocab));
  for (int64_t v : {0, 1, 17, 4095}) {
    REQUIRE(a.table[static_cast<size_t>(v)] == static_cast<int32_t>(hash_keyed(42, static_cast<uint64_t>(v)) % 8));
  }
  REQUIRE(build_random_hash_table(vocab, experts, 42).table == a.table);
  HashTable b = build_random_hash_table(vocab, experts, 43);
  REQUIRE(b.table != a.table);
  // 512 per expert on average, standard deviation ~21: +-110 is more than 5 sigma.
  for (int64_t n : per_expert(a.table, experts)) {
    REQUIRE(n > 512 - 110);
    REQUIRE(n < 512 + 110);
  }
}

TEST_CASE("balanced table: greedy bin packing on a hand example", "[hash]") {
  // Order by count: 2 (9), 5 (7), 0 (5), 3 (3), 4 (3, after 3), 7 (1); unseen 1, 6.
  // loads: 2->e0 (9,0,0); 5->e1 (9,7,0); 0->e2 (9,7,5); 3->e2 (9,7,8); 4->e1 (9,10,8);
  // 7->e2 (9,10,9); then unseen 1->e0, 6->e1.
  std::vector<int64_t> counts = {5, 0, 9, 3, 3, 7, 0, 1};
  HashTable t = build_balanced_hash_table(counts, 3);
  REQUIRE(t.kind == HashKind::balanced);
  REQUIRE(t.vocab_size == 8);
  REQUIRE(t.table == std::vector<int32_t>{2, 0, 0, 2, 1, 1, 1, 2});
  HashTableLoad by_count = hash_table_load(t, &counts);
  REQUIRE(by_count.per_expert == std::vector<int64_t>{9, 10, 9});
  REQUIRE(by_count.max_over_mean == Approx(10.0 / (28.0 / 3.0)));
  REQUIRE(hash_table_load(t).per_expert == std::vector<int64_t>{2, 3, 3});

  // Equal loads go to the lower expert: 0->e0 (4,0), 1->e1 (4,4), 2->e0 (6,4), 3->e1 (6,6).
  REQUIRE(build_balanced_hash_table({4, 4, 2, 2}, 2).table == std::vector<int32_t>{0, 1, 0, 1});
  // Unseen tokens only: round-robin in id order.
  REQUIRE(build_balanced_hash_table({0, 0, 0, 0, 0}, 2).table == std::vector<int32_t>{0, 1, 0, 1, 0});
}

TEST_CASE("balanced table: counted from a token shard, reproducible, bad ids fail", "[hash]") {
  TempDir dir;
  std::vector<uint32_t> tokens = {2, 5, 0, 2, 2, 7, 5, 3, 4, 2, 5, 0, 3, 4, 2, 2, 0, 2, 5, 0, 3, 4,
                                  2, 5, 0, 5, 5, 0, 2};
  const std::string shard = dir.file("train.tok");
  data::write_token_shard(shard, tokens, data::TokenDType::u16);
  auto ds = data::TokenDataset::open(shard);
  std::vector<int64_t> counts = count_token_frequencies(ds, 8);
  std::vector<int64_t> expected(8, 0);
  for (uint32_t t : tokens) ++expected[t];
  REQUIRE(counts == expected);
  REQUIRE(build_balanced_hash_table(counts, 3).table == build_balanced_hash_table(expected, 3).table);

  const std::string wide = dir.file("wide.tok");
  data::write_token_shard(wide, std::vector<uint32_t>{1, 2, 70000, 3}, data::TokenDType::u32);
  REQUIRE_THROWS_WITH(count_token_frequencies(data::TokenDataset::open(wide), 4096),
                      Contains("holds token id 70000 at index 2, outside the vocabulary of 4096 tokens"));
}

TEST_CASE("hash table files: save/load round trip and validation", "[hash]") {
  TempDir dir;
  HashTable t = build_balanced_hash_table({5, 0, 9, 3, 3, 7, 0, 1}, 3);
  t.seed = 99;
  t.source = "data/train.tok";
  const std::string path = dir.file("balanced.safetensors");
  save_hash_table(path, t);
  HashTable back = load_hash_table(path);
  REQUIRE(back.kind == t.kind);
  REQUIRE(back.num_experts == 3);
  REQUIRE(back.vocab_size == 8);
  REQUIRE(back.seed == 99);
  REQUIRE(back.source == "data/train.tok");
  REQUIRE(back.table == t.table);
  SafetensorsHeader header = read_safetensors_header(path);
  REQUIRE(header.metadata.at("format") == "moe-hash-table");
  REQUIRE(header.metadata.at("kind") == "balanced");
  REQUIRE(header.metadata.at("vocab_size") == "8");
  REQUIRE(header.metadata.at("num_experts") == "3");

  REQUIRE_THROWS_WITH(load_hash_table(dir.file("missing.safetensors")),
                      Contains("hash table " + dir.file("missing.safetensors") + " does not exist"));
  const std::string plain = dir.file("plain.safetensors");
  write_safetensors(plain, {{"table", Tensor::from_vector(t.table, {8}, DType::i32)}}, {{"format", "moe-engine"}});
  REQUIRE_THROWS_WITH(load_hash_table(plain), Contains("is not a moe-engine hash table"));
  const std::string bad = dir.file("bad.safetensors");
  write_safetensors(bad, {{"table", Tensor::from_vector(std::vector<int32_t>{0, 1, 9, 2}, {4}, DType::i32)}},
                    {{"format", "moe-hash-table"}, {"kind", "random"}, {"vocab_size", "4"}, {"num_experts", "3"},
                     {"seed", "0"}, {"source", "hand"}});
  REQUIRE_THROWS_WITH(load_hash_table(bad), Contains("token 2 maps to expert 9, outside [0, 3)"));
  const std::string short_table = dir.file("short.safetensors");
  write_safetensors(short_table, {{"table", Tensor::from_vector(std::vector<int32_t>{0, 1}, {2}, DType::i32)}},
                    {{"format", "moe-hash-table"}, {"kind", "random"}, {"vocab_size", "4"}, {"num_experts", "3"},
                     {"seed", "0"}, {"source", "hand"}});
  REQUIRE_THROWS_WITH(load_hash_table(short_table), Contains("the table has 2 entries for a vocabulary of 4 tokens"));
  HashTable position{HashKind::position, 3, 4, 0, "", {0, 1, 2, 0}};
  REQUIRE_THROWS_WITH(save_hash_table(dir.file("p.safetensors"), position), Contains("has no token table"));
}

TEST_CASE("k-means recovers well-separated clusters, deterministically", "[hash]") {
  Blobs blobs = make_blobs({13, 7, 22, 5}, 6, 11);
  for (uint64_t seed : {0u, 1u, 2u, 3u}) {
    auto labels = kmeans_labels(blobs.rows, 4, seed, 20);
    INFO("seed " << seed);
    REQUIRE(same_partition(labels, blobs.truth));
    REQUIRE(kmeans_labels(blobs.rows, 4, seed, 20) == labels);
  }
  // Unclustered points: the seed decides the result.
  EmbeddingRows uniform{300, 3, test::random_values(900, 5), "uniform"};
  auto a = kmeans_labels(uniform, 8, 1, 10);
  REQUIRE(kmeans_labels(uniform, 8, 1, 10) == a);
  REQUIRE(kmeans_labels(uniform, 8, 2, 10) != a);
  REQUIRE(std::set<int32_t>(a.begin(), a.end()).size() == 8);

  // Degenerate input (all points equal): every label in range, no empty-cluster failure.
  EmbeddingRows same{5, 2, std::vector<double>(10, 1.5), "same"};
  for (int32_t l : kmeans_labels(same, 3, 0, 5)) REQUIRE((l >= 0 && l < 3));
  REQUIRE_THROWS_WITH(kmeans_labels(EmbeddingRows{2, 2, {0, 0, 1, 1}, "few"}, 3, 0, 5),
                      Contains("k-means with 3 clusters needs at least 3 points, got 2"));
}

TEST_CASE("dispersal: exact on a hand example, each cluster spread evenly", "[hash]") {
  // cluster 0 = {1, 4} -> e0, e1; cluster 1 = {0, 2, 3} -> e0, e1, e0; cluster 2 = {5} -> e1.
  REQUIRE(disperse_clusters({1, 0, 1, 1, 0, 2}, 3, 2) == std::vector<int32_t>{0, 0, 1, 0, 1, 1});

  Blobs blobs = make_blobs({13, 7, 22, 5}, 6, 11);
  HashTable t = build_dispersed_hash_table(blobs.rows, 4, 0, 20);
  REQUIRE(t.kind == HashKind::dispersed);
  for (int32_t c = 0; c < 4; ++c) {
    std::vector<int32_t> members;
    for (size_t v = 0; v < t.table.size(); ++v) {
      if (blobs.truth[v] == c) members.push_back(t.table[v]);
    }
    auto n = per_expert(members, 4);
    INFO("cluster " << c);
    REQUIRE(*std::max_element(n.begin(), n.end()) - *std::min_element(n.begin(), n.end()) <= 1);
  }
  auto all = per_expert(t.table, 4);
  REQUIRE(*std::max_element(all.begin(), all.end()) - *std::min_element(all.begin(), all.end()) <= 1);
}

TEST_CASE("clustering table from a checkpoint's embed.tokens", "[hash]") {
  TempDir dir;
  Blobs blobs = make_blobs({9, 16, 4, 11, 8}, 5, 21);
  write_embedding_checkpoint(dir.path() / "ckpt", blobs.rows);
  EmbeddingRows rows = read_input_embeddings(dir.path() / "ckpt");
  REQUIRE(rows.rows == 48);
  REQUIRE(rows.dim == 5);
  REQUIRE(rows.source == (dir.path() / "ckpt" / "model.safetensors").string());
  HashTable t = build_clustering_hash_table(rows, 5, 7, 20);
  REQUIRE(t.kind == HashKind::clustering);
  REQUIRE(t.vocab_size == 48);
  REQUIRE(same_partition(t.table, blobs.truth));
  REQUIRE(build_clustering_hash_table(read_input_embeddings(dir.path() / "ckpt" / "model.safetensors"), 5, 7, 20)
              .table == t.table);

  write_safetensors(dir.file("no_embed.safetensors"), {{"w", test::random_tensor({2, 2}, DType::f32, 1)}});
  REQUIRE_THROWS_WITH(read_input_embeddings(dir.file("no_embed.safetensors")), Contains("has no tensor 'embed.tokens'"));
  REQUIRE_THROWS_WITH(read_input_embeddings(dir.path() / "nowhere"), Contains("does not exist"));
}

}  // namespace
}  // namespace moe

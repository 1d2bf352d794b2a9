// Hash-layer routing tables (Roller et al. 2021, "Hash Layers For Large Sparse Models"): the
// kinds, the seeded 64-bit mix they share, token->expert tables, their file format and builders.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moe {

namespace data {
class TokenDataset;
}

// The hash-routing family. Token tables (random, balanced, clustering, dispersed) map a token
// id to an expert; previous_token and oracle look the previous / target token up in a random
// table; position and bigram hash positions and token pairs directly. docs/hash_routing.md.
enum class HashKind { random, balanced, clustering, dispersed, position, bigram, previous_token, oracle };

// "random", "balanced", ... (the values of moe.hash_kind).
const char* hash_kind_name(HashKind kind);
// Throws naming `key` and the valid values on an unknown name.
HashKind hash_kind_from_name(const std::string& name, const std::string& key = "moe.hash_kind");
// balanced, clustering and dispersed are built from data or a checkpoint by `moe hash-table`.
bool hash_kind_needs_table_file(HashKind kind);
// The kinds whose routing reads a token->expert table (a file or the seeded random one).
bool hash_kind_uses_token_table(HashKind kind);

// The seeded mix every hash kind uses (splitmix64's finaliser, a bijection on 64 bits):
//   hash_mix64(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
//                  z ^= z >> 31
//   hash_keyed(seed, key) = hash_mix64(key ^ hash_mix64(seed + 0x9E3779B97F4A7C15))
uint64_t hash_mix64(uint64_t z);
uint64_t hash_keyed(uint64_t seed, uint64_t key);
// The seed of hashed layer `layer_index` when every layer gets its own hash:
// hash_keyed(seed, 0x4C41594552000000 ^ layer_index) ("LAYER" in the high bytes).
uint64_t hash_layer_seed(uint64_t seed, int64_t layer_index);
// A uniform double in [0, 1) from the top 53 bits of hash_keyed(seed, key).
double hash_uniform(uint64_t seed, uint64_t key);

// A token->expert table: table[v] in [0, num_experts) for every token id v < vocab_size.
struct HashTable {
  HashKind kind = HashKind::random;
  int64_t num_experts = 0;
  int64_t vocab_size = 0;
  uint64_t seed = 0;
  std::string source;  // the shard or checkpoint it was built from ("seed" for random)
  std::vector<int32_t> table;
};

// File format: safetensors with one tensor "table" i32[vocab_size] and the metadata
// format = "moe-hash-table", kind, vocab_size, num_experts, seed, source (all strings).
void save_hash_table(const std::filesystem::path& path, const HashTable& table);
// Validates everything it reads; each problem is one line naming the file.
HashTable load_hash_table(const std::filesystem::path& path);
// Checks the shape, the expert range and the kind of a table (used by load and the builders).
void check_hash_table(const HashTable& table, const std::string& where);

// Fixed random table: table[v] = hash_keyed(seed, v) mod num_experts (independent, uniform).
HashTable build_random_hash_table(int64_t vocab_size, int64_t num_experts, uint64_t seed);

// counts[v] = occurrences of token v in the shard; a token id >= vocab_size is an error.
std::vector<int64_t> count_token_frequencies(const data::TokenDataset& shard, int64_t vocab_size);

// Balanced table (greedy bin packing on token frequencies): the seen tokens in order of count
// descending (ties: lower id first), each to the expert with the least total count so far
// (ties: lower expert); then the unseen tokens in id order, round-robin from expert 0.
HashTable build_balanced_hash_table(const std::vector<int64_t>& counts, int64_t num_experts);

// Tokens (or, with `counts`, token occurrences) per expert, and max / mean over experts.
struct HashTableLoad {
  std::vector<int64_t> per_expert;
  double max_over_mean = 0;
};
HashTableLoad hash_table_load(const HashTable& table, const std::vector<int64_t>* counts = nullptr);

}  // namespace moe

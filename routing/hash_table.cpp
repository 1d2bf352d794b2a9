// Hash kinds, the seeded mix, token->expert tables on disk, and the random and balanced
// builders (the clustering builders live in hash_clustering.cpp).
#include "routing/hash_table.h"

#include <algorithm>
#include <charconv>
#include <numeric>

#include "src/data/token_shard.h"
#include "src/tensor/tensor.h"
#include "src/io/safetensors.h"

namespace moe {

namespace {

constexpr const char* k_table_format = "moe-hash-table";
constexpr const char* k_table_tensor = "table";

struct KindName {
  HashKind kind;
  const char* name;
};
constexpr KindName k_kind_names[] = {
    {HashKind::random, "random"},         {HashKind::balanced, "balanced"}, {HashKind::clustering, "clustering"},
    {HashKind::dispersed, "dispersed"},   {HashKind::position, "position"}, {HashKind::bigram, "bigram"},
    {HashKind::previous_token, "previous_token"}, {HashKind::oracle, "oracle"},
};

// A non-negative integer metadata field of a table file.
int64_t metadata_int(const SafetensorsMetadata& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  MOE_CHECK(it != meta.end(), "hash table ", path, " has no '", key, "' in its metadata");
  int64_t value = -1;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  MOE_CHECK(ec == std::errc() && end == s.data() + s.size() && value >= 0, "hash table ", path, ": metadata '", key,
            "' = \"", s, "\" is not a non-negative integer");
  return value;
}

uint64_t metadata_u64(const SafetensorsMetadata& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  MOE_CHECK(it != meta.end(), "hash table ", path, " has no '", key, "' in its metadata");
  uint64_t value = 0;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  MOE_CHECK(ec == std::errc() && end == s.data() + s.size(), "hash table ", path, ": metadata '", key, "' = \"", s,
            "\" is not an unsigned integer");
  return value;
}

template <typename T>
void count_tokens(const T* tokens, int64_t n, int64_t vocab_size, const std::string& path, std::vector<int64_t>& out) {
  for (int64_t i = 0; i < n; ++i) {
    uint64_t t = tokens[i];
    MOE_CHECK(t < static_cast<uint64_t>(vocab_size), "token shard ", path, " holds token id ", t, " at index ", i,
              ", outside the vocabulary of ", vocab_size, " tokens");
    ++out[t];
  }
}

}  // namespace

const char* hash_kind_name(HashKind kind) {
  for (const auto& k : k_kind_names) {
    if (k.kind == kind) return k.name;
  }
  MOE_FAIL("unknown hash kind ", static_cast<int>(kind));
}

HashKind hash_kind_from_name(const std::string& name, const std::string& key) {
  std::string valid;
  for (const auto& k : k_kind_names) {
    if (name == k.name) return k.kind;
    valid += valid.empty() ? "" : ", ";
    valid += k.name;
  }
  MOE_FAIL(key, " = \"", name, "\" is not a hash kind (", valid, ")");
}

bool hash_kind_needs_table_file(HashKind kind) {
  return kind == HashKind::balanced || kind == HashKind::clustering || kind == HashKind::dispersed;
}

bool hash_kind_uses_token_table(HashKind kind) {
  return kind != HashKind::position && kind != HashKind::bigram;
}

uint64_t hash_mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ull;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z;
}

uint64_t hash_keyed(uint64_t seed, uint64_t key) { return hash_mix64(key ^ hash_mix64(seed + 0x9E3779B97F4A7C15ull)); }

uint64_t hash_layer_seed(uint64_t seed, int64_t layer_index) {
  MOE_CHECK(layer_index >= 0, "hash layer index ", layer_index, " is negative");
  return hash_keyed(seed, 0x4C41594552000000ull ^ static_cast<uint64_t>(layer_index));
}

double hash_uniform(uint64_t seed, uint64_t key) {
  return static_cast<double>(hash_keyed(seed, key) >> 11) * 0x1.0p-53;
}

void check_hash_table(const HashTable& t, const std::string& where) {
  MOE_CHECK(hash_kind_uses_token_table(t.kind), where, ": a '", hash_kind_name(t.kind),
            "' hash has no token table");
  MOE_CHECK(t.num_experts >= 1, where, ": num_experts = ", t.num_experts, " must be at least 1");
  MOE_CHECK(t.vocab_size >= 1, where, ": vocab_size = ", t.vocab_size, " must be at least 1");
  MOE_CHECK(static_cast<int64_t>(t.table.size()) == t.vocab_size, where, ": the table has ", t.table.size(),
            " entries for a vocabulary of ", t.vocab_size, " tokens");
  for (size_t v = 0; v < t.table.size(); ++v) {
    MOE_CHECK(t.table[v] >= 0 && t.table[v] < t.num_experts, where, ": token ", v, " maps to expert ", t.table[v],
              ", outside [0, ", t.num_experts, ")");
  }
}

void save_hash_table(const std::filesystem::path& path, const HashTable& table) {
  check_hash_table(table, "hash table " + path.string());
  Tensor t = Tensor::from_vector(table.table, {table.vocab_size}, DType::i32);
  write_safetensors(path, {{k_table_tensor, t}},
                    {{"format", k_table_format},
                     {"kind", hash_kind_name(table.kind)},
                     {"vocab_size", std::to_string(table.vocab_size)},
                     {"num_experts", std::to_string(table.num_experts)},
                     {"seed", std::to_string(table.seed)},
                     {"source", table.source}});
}

HashTable load_hash_table(const std::filesystem::path& path) {
  const std::string p = path.string();
  MOE_CHECK(std::filesystem::is_regular_file(path), "hash table ", p,
            " does not exist (build it with `moe hash-table`)");
  SafetensorsFile file = read_safetensors(path);
  const auto& meta = file.metadata;
  auto format = meta.find("format");
  MOE_CHECK(format != meta.end() && format->second == k_table_format, "hash table ", p,
            " is not a moe-engine hash table (no metadata format = \"", k_table_format, "\")");
  HashTable t;
  auto kind = meta.find("kind");
  MOE_CHECK(kind != meta.end(), "hash table ", p, " has no 'kind' in its metadata");
  t.kind = hash_kind_from_name(kind->second, "hash table " + p + ": metadata kind");
  t.vocab_size = metadata_int(meta, "vocab_size", p);
  t.num_experts = metadata_int(meta, "num_experts", p);
  t.seed = metadata_u64(meta, "seed", p);
  auto source = meta.find("source");
  t.source = source == meta.end() ? "" : source->second;
  auto it = file.tensors.find(k_table_tensor);
  MOE_CHECK(it != file.tensors.end(), "hash table ", p, " has no tensor '", k_table_tensor, "'");
  const Tensor& tensor = it->second;
  MOE_CHECK(tensor.dtype() == DType::i32 && tensor.ndim() == 1, "hash table ", p, ": '", k_table_tensor,
            "' must be i32[vocab_size], got ", dtype_name(tensor.dtype()), shape_str(tensor.shape()));
  t.table = tensor.to_vector<int32_t>();
  check_hash_table(t, "hash table " + p);
  return t;
}

HashTable build_random_hash_table(int64_t vocab_size, int64_t num_experts, uint64_t seed) {
  MOE_CHECK(vocab_size >= 1 && num_experts >= 1, "a random hash table needs vocab_size >= 1 and num_experts >= 1 (got ",
            vocab_size, " and ", num_experts, ")");
  HashTable t{HashKind::random, num_experts, vocab_size, seed, "seed", {}};
  t.table.resize(static_cast<size_t>(vocab_size));
  for (int64_t v = 0; v < vocab_size; ++v) {
    t.table[static_cast<size_t>(v)] =
        static_cast<int32_t>(hash_keyed(seed, static_cast<uint64_t>(v)) % static_cast<uint64_t>(num_experts));
  }
  return t;
}

std::vector<int64_t> count_token_frequencies(const data::TokenDataset& shard, int64_t vocab_size) {
  MOE_CHECK(vocab_size >= 1, "counting token frequencies needs vocab_size >= 1, got ", vocab_size);
  std::vector<int64_t> counts(static_cast<size_t>(vocab_size), 0);
  if (shard.size() == 0) return counts;
  if (shard.dtype() == data::TokenDType::u16) {
    count_tokens(shard.data_u16(), shard.size(), vocab_size, shard.path(), counts);
  } else {
    count_tokens(shard.data_u32(), shard.size(), vocab_size, shard.path(), counts);
  }
  return counts;
}

HashTable build_balanced_hash_table(const std::vector<int64_t>& counts, int64_t num_experts) {
  const auto vocab = static_cast<int64_t>(counts.size());
  MOE_CHECK(vocab >= 1 && num_experts >= 1, "a balanced hash table needs vocab_size >= 1 and num_experts >= 1 (got ",
            vocab, " and ", num_experts, ")");
  HashTable t{HashKind::balanced, num_experts, vocab, 0, "", std::vector<int32_t>(counts.size(), -1)};
  std::vector<int32_t> seen;
  for (int64_t v = 0; v < vocab; ++v) {
    MOE_CHECK(counts[static_cast<size_t>(v)] >= 0, "token ", v, " has a negative count");
    if (counts[static_cast<size_t>(v)] > 0) seen.push_back(static_cast<int32_t>(v));
  }
  // Most frequent first; equal counts keep id order (stable sort over ascending ids).
  std::stable_sort(seen.begin(), seen.end(), [&](int32_t a, int32_t b) {
    return counts[static_cast<size_t>(a)] > counts[static_cast<size_t>(b)];
  });
  std::vector<int64_t> load(static_cast<size_t>(num_experts), 0);
  for (int32_t v : seen) {
    // The least-loaded expert; min_element returns the first (lowest) of equal loads.
    auto e = std::min_element(load.begin(), load.end()) - load.begin();
    t.table[static_cast<size_t>(v)] = static_cast<int32_t>(e);
    load[static_cast<size_t>(e)] += counts[static_cast<size_t>(v)];
  }
  int64_t next = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (counts[static_cast<size_t>(v)] == 0) t.table[static_cast<size_t>(v)] = static_cast<int32_t>(next++ % num_experts);
  }
  return t;
}

HashTableLoad hash_table_load(const HashTable& table, const std::vector<int64_t>* counts) {
  MOE_CHECK(counts == nullptr || counts->size() == table.table.size(), "token counts cover ",
            counts ? counts->size() : 0, " ids but the hash table has ", table.table.size());
  HashTableLoad load;
  load.per_expert.assign(static_cast<size_t>(table.num_experts), 0);
  for (size_t v = 0; v < table.table.size(); ++v) {
    load.per_expert[static_cast<size_t>(table.table[v])] += counts ? (*counts)[v] : 1;
  }
  int64_t total = std::accumulate(load.per_expert.begin(), load.per_expert.end(), int64_t{0});
  int64_t max = *std::max_element(load.per_expert.begin(), load.per_expert.end());
  double mean = static_cast<double>(total) / static_cast<double>(table.num_experts);
  load.max_over_mean = total > 0 ? static_cast<double>(max) / mean : 0.0;
  return load;
}

}  // namespace moe

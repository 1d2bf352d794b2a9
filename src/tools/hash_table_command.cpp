// `moe hash-table`: option checks, the builder per kind, the save and the one-line summary.
#include "src/tools/hash_table_command.h"

#include <iomanip>
#include <numeric>
#include <optional>
#include <sstream>

#include "routing/hash_clustering.h"
#include "src/data/indexed_dataset.h"
#include "src/util/check.h"

namespace moe {

namespace {

std::string format_ratio(double value) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(3) << value;
  return s.str();
}

}  // namespace

HashTable run_hash_table_command(const HashTableCommandOptions& o, std::ostream& log) {
  const HashKind kind = hash_kind_from_name(o.kind, "--kind");
  MOE_CHECK(kind == HashKind::random || hash_kind_needs_table_file(kind), "--kind ", o.kind,
            " builds no table: position, bigram, previous_token and oracle hash on the fly (set moe.hash_kind "
            "directly; previous_token and oracle use the random table of moe.hash_seed)");
  MOE_CHECK(o.experts >= 1, "--experts = ", o.experts, " must be at least 1");
  MOE_CHECK(!o.out.empty(), "--out is required (the table file to write)");
  MOE_CHECK(o.vocab_size >= 0, "--vocab-size = ", o.vocab_size, " must be positive");
  MOE_CHECK(o.iterations >= 0, "--iterations = ", o.iterations, " must be at least 0");
  const bool from_checkpoint = kind == HashKind::clustering || kind == HashKind::dispersed;
  MOE_CHECK(kind != HashKind::balanced || !o.data.empty(),
            "--kind balanced needs --data SHARD (the training tokens whose frequencies it balances)");
  MOE_CHECK(!from_checkpoint || !o.checkpoint.empty(), "--kind ", o.kind,
            " needs --checkpoint DIR (k-means runs over its input embedding embed.tokens)");
  MOE_CHECK(from_checkpoint || o.vocab_size > 0, "--kind ", o.kind, " needs --vocab-size (model.vocab_size)");

  HashTable table;
  if (from_checkpoint) {
    EmbeddingRows rows = read_input_embeddings(o.checkpoint);
    MOE_CHECK(o.vocab_size == 0 || o.vocab_size == rows.rows, "checkpoint ", rows.source, " has an embedding of ",
              rows.rows, " tokens but --vocab-size is ", o.vocab_size);
    table = kind == HashKind::clustering ? build_clustering_hash_table(rows, o.experts, o.seed, o.iterations)
                                         : build_dispersed_hash_table(rows, o.experts, o.seed, o.iterations);
  }
  std::optional<std::vector<int64_t>> counts;
  if (!o.data.empty()) {
    auto shard = data::open_token_source(o.data);
    counts = count_token_frequencies(shard, from_checkpoint ? table.vocab_size : o.vocab_size);
  }
  if (kind == HashKind::random) table = build_random_hash_table(o.vocab_size, o.experts, o.seed);
  if (kind == HashKind::balanced) {
    table = build_balanced_hash_table(*counts, o.experts);
    table.seed = o.seed;
    table.source = o.data;
  }
  save_hash_table(o.out, table);

  HashTableLoad by_vocab = hash_table_load(table);
  log << "hash-table: " << hash_kind_name(kind) << ", " << table.vocab_size << " tokens -> " << table.num_experts
      << " experts (seed " << table.seed << ", from " << table.source << "): tokens per expert max/mean "
      << format_ratio(by_vocab.max_over_mean) << " over the vocabulary";
  if (counts) {
    int64_t total = std::accumulate(counts->begin(), counts->end(), int64_t{0});
    log << ", " << format_ratio(hash_table_load(table, &*counts).max_over_mean) << " frequency-weighted over "
        << total << " tokens of " << o.data;
  }
  log << "; wrote " << o.out << '\n';
  return table;
}

}  // namespace moe

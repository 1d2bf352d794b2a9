// `moe hash-table`: builds a hash-routing table (balanced, clustering, dispersed, random),
// saves it, and prints one line with its load balance. The CLI file only parses options.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "routing/hash_table.h"

namespace moe {

struct HashTableCommandOptions {
  std::string kind;         // balanced | random | clustering | dispersed
  int64_t experts = 0;      // experts per MoE layer (after any fine-grained segmentation)
  std::string out;          // the table file (safetensors)
  std::string data;         // token shard: balanced (required); random, clustering, dispersed (load report)
  std::string checkpoint;   // checkpoint directory or model.safetensors: clustering, dispersed
  int64_t vocab_size = 0;   // balanced, random (required); clustering, dispersed (checked against the embedding)
  uint64_t seed = 0;        // random table; k-means initialisation
  int64_t iterations = 20;  // k-means rounds (at most; stops early at convergence)
};

// Builds and saves the table, writes the summary line to `log`, returns the table.
HashTable run_hash_table_command(const HashTableCommandOptions& options, std::ostream& log);

}  // namespace moe

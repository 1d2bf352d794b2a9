// Hash routing (Roller et al. 2021): a parameter-free router that sends each token to one
// expert chosen by a fixed function of token ids or positions, with weight 1 (k = 1).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "routing/hash_table.h"
#include "routing/router.h"

namespace moe {

// What the MoE layer passes in from the config (moe.hash_*; docs/hash_routing.md).
struct HashRouterOptions {
  HashKind kind = HashKind::random;  // moe.hash_kind (hash_kind_from_name)
  int64_t num_experts = 0;           // experts of this MoE layer
  int64_t vocab_size = 0;            // model.vocab_size
  std::string table_path;            // moe.hash_table: balanced, clustering, dispersed (optional for
                                     // random, previous_token, oracle; not allowed for position, bigram)
  uint64_t seed = 0;                 // moe.hash_seed
  int64_t layer_index = 0;           // the model layer (mixed into the seed when per_layer)
  bool per_layer = false;            // moe.hash_per_layer
  bool allow_oracle = false;         // moe.hash_allow_oracle
};

// Routing per kind, for row t of x (rows are whole sequences of inputs.seq_len tokens, so
// position p = t mod seq_len; "prev" is token t-1 of the same sequence):
//   random, balanced, clustering, dispersed: table[token]
//   previous_token: table[prev]; at p = 0, table[token]
//   oracle:         table[target]; where target < 0 (ignored), table[token]
//   position:       perm[p] mod E, perm = a seeded Fisher-Yates shuffle of 0..seq_len-1
//   bigram:         hash_keyed(seed, prev << 32 | token) mod E, prev = 0xFFFFFFFF at p = 0
// table is the file's (moe.hash_table) or the fixed random table of the (layer) seed.
class HashRouter : public Router {
 public:
  explicit HashRouter(const HashRouterOptions& options);
  // With a table already in memory (load it once, share it across layers); it must be built
  // for options.vocab_size and options.num_experts. options.table_path only names it in errors.
  HashRouter(const HashRouterOptions& options, std::shared_ptr<const HashTable> table);

  int64_t num_experts() const override { return num_experts_; }
  int64_t slots_per_token() const override { return 1; }
  std::string name() const override { return std::string("hash-") + hash_kind_name(kind_); }
  // x[T,d] -> ids i32[T,1] and weights accum(x)[T,1] = 1 on x's device; scores, logits undefined.
  Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const override;
  // No parameters, and the combine weights are the constant 1: nothing to add to dx.
  void backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const override {}

  // The expert of each of the num_tokens rows, on the host (what route() uploads).
  std::vector<int32_t> expert_ids(int64_t num_tokens, const RouteInputs& inputs) const;
  // position kind: the expert of each position 0..seq_len-1.
  std::vector<int32_t> position_experts(int64_t seq_len) const;

  HashKind kind() const { return kind_; }
  uint64_t seed() const { return seed_; }  // after mixing in the layer index (per_layer)
  const HashTable* table() const { return table_.get(); }  // null for position and bigram

 private:
  void init(const HashRouterOptions& options, std::shared_ptr<const HashTable> table);
  int32_t table_expert(int32_t token, int64_t row) const;
  void check_token(int32_t token, int64_t row) const;

  HashKind kind_ = HashKind::random;
  int64_t num_experts_ = 0, vocab_size_ = 0;
  uint64_t seed_ = 0;
  std::string table_name_;
  std::shared_ptr<const HashTable> table_;
};

// Combine weights accum(like)[rows, cols], every one `value`, on like's device: the fixed weights
// of the parameter-free routers (1 for hash, 1/N for multihash).
Tensor constant_weights(int64_t rows, int64_t cols, double value, const Tensor& like);

// RouterFactory of the hash kind (routing/router_registry.cpp): moe.hash_* and the layer index.
std::unique_ptr<Router> make_hash_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                         const RouterSpec& spec);

}  // namespace moe

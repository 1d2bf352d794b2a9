// MultiHash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models", MultiHash layers):
// N seeded hashes of the token id each pick one expert, and the token's output is the average of
// its N experts' outputs (weight 1/N each). Parameter-free, like the hash router.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "routing/router.h"

namespace moe {

struct MultiHashRouterOptions {
  int64_t num_experts = 0;  // experts of this MoE layer
  int64_t vocab_size = 0;   // model.vocab_size
  int64_t num_hashes = 2;   // moe.hash_count: N, at most num_experts
  uint64_t seed = 0;        // moe.hash_seed
  int64_t layer_index = 0;  // the model layer (mixed into the seed when per_layer)
  bool per_layer = false;   // moe.hash_per_layer
};

// Token v goes to experts e_0 .. e_{N-1}, all distinct (hash i picks among the experts that hashes
// 0 .. i-1 left, in index order):
//   e_0 = hash_keyed(s, v) mod E                (the hash router's random table for seed s)
//   e_i = the r-th unused expert, r = hash_keyed(hash_keyed(s, 0x4D554C5449000000 ^ i), v) mod (E - i)
// s = moe.hash_seed, or hash_layer_seed(seed, layer) with per_layer. Weights are 1/N.
class MultiHashRouter : public Router {
 public:
  explicit MultiHashRouter(const MultiHashRouterOptions& options);

  int64_t num_experts() const override { return num_experts_; }
  int64_t slots_per_token() const override { return num_hashes_; }
  std::string name() const override { return "multihash"; }
  // x[T,d] -> ids i32[T,N] and weights accum(x)[T,N] = 1/N on x's device; scores, logits undefined.
  Routing route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const override;
  // No parameters and constant weights: nothing to add to dx.
  void backward(const RouterSaved& saved, const RouterGrads& grads, Tensor& dx) const override {}

  // The N experts of token id `token`, in hash order.
  std::vector<int32_t> experts_of(int32_t token) const;
  // The experts of each of the num_tokens rows, row-major [num_tokens, N] (what route() uploads).
  std::vector<int32_t> expert_ids(int64_t num_tokens, const RouteInputs& inputs) const;
  uint64_t seed() const { return seed_; }  // after mixing in the layer index (per_layer)

 private:
  int64_t num_experts_ = 0, vocab_size_ = 0, num_hashes_ = 0;
  uint64_t seed_ = 0;
  std::vector<int32_t> table_;  // [vocab_size, N]
};

// RouterFactory of the multihash kind (routing/router_registry.cpp): moe.hash_count, moe.hash_seed
// and moe.hash_per_layer; moe.hash_kind must be "random" and moe.hash_table unset.
std::unique_ptr<Router> make_multihash_router(ParamStore& store, const std::string& prefix, const MoeConfig& moe,
                                              const RouterSpec& spec);

}  // namespace moe

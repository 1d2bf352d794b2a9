// Megatron-style tensor-parallel self-attention: Q/K/V column-parallel by whole heads, the output
// projection row-parallel; one all-reduce of y in forward and one of dx in backward.
#pragma once

#include <string>

#include "parallel/communicator.h"
#include "src/model/attention.h"
#include "src/model/param_store.h"

namespace moe {

// Rank r of the tp group holds query heads [r*H/tp, (r+1)*H/tp) and kv heads
// [r*KV/tp, (r+1)*KV/tp): with the grouping h -> h / (H/KV) every local query head reads a local
// kv head. Parameters keep the canonical names and whole shapes of Attention's:
//   wq[d, H*hd], wk/wv[d, KV*hd]: column shards (ParamStore::add_col_shard) of the rank's heads;
//   wo[H*hd, d]: a row shard of the rank's heads.
// The input x is replicated over the group (forward: identity; backward: all-reduce of dx) and so
// is the output (forward: all-reduce of the partial products; backward: identity).
class TpAttention {
 public:
  using Saved = Attention::Saved;

  // Requires num_heads and num_kv_heads divisible by tp.size(); keeps a reference to tp.
  TpAttention(ParamStore& store, const std::string& prefix, const AttentionConfig& config, Communicator& tp);
  // x[B*S, d] (the same on every rank of the group) -> y[B*S, d] (the same on every rank)
  Tensor forward(const Tensor& x, int64_t batch, Saved& saved) const;
  // dy[B*S, d] (the same on every rank) -> dx[B*S, d] (all-reduced); accumulates the local
  // projection gradients
  Tensor backward(const Saved& saved, const Tensor& dy, int64_t batch) const;

  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }

 private:
  ops::AttentionShape shape(int64_t batch) const;

  ParamStore* store_;
  Communicator* tp_;
  AttentionConfig config_;
  int64_t head_dim_, local_heads_, local_kv_heads_;
  ParamId wq_, wk_, wv_, wo_;
};

}  // namespace moe

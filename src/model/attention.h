// Causal multi-head / grouped-query self-attention with optional rotary positions:
// x[T,d] -> q,k,v projections -> rope -> attention -> output projection -> y[T,d].
#pragma once

#include <string>

#include "src/model/param_store.h"
#include "src/ops/ops.h"

namespace moe {

struct AttentionConfig {
  int64_t d_model = 0, num_heads = 0, num_kv_heads = 0, seq_len = 0;
  bool rope = true;
  float rope_theta = 10000.0f;
  double init_std = 0.02, out_init_std = 0.02;
};

class Attention {
 public:
  struct Saved {
    Tensor x, q, k, v, out, lse;
  };

  Attention(ParamStore& store, const std::string& prefix, const AttentionConfig& config);
  // x[B*S, d] -> y[B*S, d]
  Tensor forward(const Tensor& x, int64_t batch, Saved& saved) const;
  // dy[B*S, d] -> dx[B*S, d]; accumulates the projection gradients
  Tensor backward(const Saved& saved, const Tensor& dy, int64_t batch) const;

 private:
  ops::AttentionShape shape(int64_t batch) const;

  ParamStore* store_;
  AttentionConfig config_;
  int64_t head_dim_;
  ParamId wq_, wk_, wv_, wo_;
};

}  // namespace moe

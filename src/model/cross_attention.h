// Cross-attention of an encoder-decoder: the decoder's positions query the encoder's output.
// x[B*Sq, d] -> q; memory[B*Skv, d] -> k, v -> attention over all Skv keys of its sequence -> y[B*Sq, d].
#pragma once

#include <string>

#include "src/nn/param_store.h"
#include "src/ops/ops.h"

namespace moe {

struct CrossAttentionConfig {
  int64_t d_model = 0, num_heads = 0, num_kv_heads = 0;
  int64_t seq_len = 0;     // queries per sequence (the decoder's positions)
  int64_t memory_len = 0;  // keys / values per sequence (the encoder's positions)
  double init_std = 0.02, out_init_std = 0.02;
};

// Parameters "<prefix>.wq" [d, H*hd], ".wk", ".wv" [d, KV*hd], ".wo" [H*hd, d]; grouped-query heads
// as in Attention; no positions (T5's cross-attention has none) and no mask: every query sees every
// encoder position of its own sequence. One rank holds it whole (no tensor parallelism).
class CrossAttention {
 public:
  struct Saved {
    Tensor x, memory, q, k, v, out, lse;
  };

  CrossAttention(ParamStore& store, const std::string& prefix, const CrossAttentionConfig& config);
  // x[B*Sq, d], memory[B*Skv, d] -> y[B*Sq, d]
  Tensor forward(const Tensor& x, const Tensor& memory, int64_t batch, Saved& saved) const;
  // dy[B*Sq, d] -> dx[B*Sq, d]; d_memory[B*Skv, d] += the memory's gradient; accumulates the
  // projection gradients.
  Tensor backward(const Saved& saved, const Tensor& dy, int64_t batch, Tensor& d_memory) const;

 private:
  ops::AttentionShape shape(int64_t batch) const;

  ParamStore* store_;
  CrossAttentionConfig config_;
  int64_t head_dim_;
  ParamId wq_, wk_, wv_, wo_;
};

}  // namespace moe

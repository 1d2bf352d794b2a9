// Causal multi-head / grouped-query self-attention with optional rotary positions:
// x[T,d] -> q,k,v projections (+ biases) -> QK-norm -> rope -> attention -> output projection -> y[T,d].
#pragma once

#include <memory>
#include <string>

#include "src/model/norm.h"
#include "src/nn/param_store.h"
#include "src/nn/tensor_parallel.h"
#include "src/ops/ops.h"

namespace moe {

// Which keys a query sees; the objective picks it (src/model/objective.h). causal: the
// positions up to its own; bidirectional: every position of its sequence.
enum class AttentionMask { causal, bidirectional };
const char* attention_mask_name(AttentionMask mask);

struct AttentionConfig {
  int64_t d_model = 0, num_heads = 0, num_kv_heads = 0, seq_len = 0;
  bool rope = true;
  float rope_theta = 10000.0f;
  double init_std = 0.02, out_init_std = 0.02;
  AttentionMask mask = AttentionMask::causal;
  // Documents packed into a sequence (model.reset_positions / reset_attention): rope positions
  // count from each token's document start, and a token attends only inside its document.
  bool document_positions = false, document_mask = false;
  ops::RopeScaling rope_scaling;
  // Biases: on the q/k/v projections (Qwen2), and on the output projection too (GPT-2, Llama's
  // attention_bias). QK-norm (OLMoE): RMSNorm over the whole q and the whole k projection
  // (widths H*hd and KV*hd, eps qk_norm_eps), before rope; needs tp = 1.
  bool qkv_bias = false, out_bias = false, qk_norm = false;
  float qk_norm_eps = 1e-5f;
};

// Tensor parallelism (Megatron): rank r of the tp group holds query heads [r*H/tp, (r+1)*H/tp)
// and kv heads [r*KV/tp, (r+1)*KV/tp); with the grouping h -> h / (H/KV) every local query head
// reads a local kv head. wq/wk/wv are column shards of the rank's heads, wo a row shard; the
// parameters keep their canonical names and whole shapes. The input is replicated over the group
// (backward: all-reduce of dx) and so is the output (forward: all-reduce of the partial products).
// Under sequence parallelism (TpGroup::sequence_parallel) x and y are this rank's tokens
// [T/tp, d]: the input is all-gathered (saved as the local part, gathered again in backward), the
// output reduce-scattered, and the backward runs the conjugates.
class Attention {
 public:
  struct Saved {
    Tensor x, q, k, v, out, lse;
    Norm::Saved q_norm, k_norm;  // QK-norm's statistics (unused without it)
    Tensor doc_starts;  // the forward's document starts (undefined without documents)
  };

  // Requires num_heads and num_kv_heads divisible by tp.size().
  Attention(ParamStore& store, const std::string& prefix, const AttentionConfig& config, TpGroup tp = {});
  // x[B*S, d] (, doc_starts i32[B*S]: ops.h, needed with document positions or masking) -> y[B*S, d]
  Tensor forward(const Tensor& x, int64_t batch, Saved& saved, const Tensor& doc_starts = Tensor()) const;
  // dy[B*S, d] -> dx[B*S, d]; accumulates the projection gradients
  Tensor backward(const Saved& saved, const Tensor& dy, int64_t batch) const;

  // Cached decoding: x[B, d], one new token per sequence at positions i32[B] -> y[B, d]. Writes the
  // token's (rotated) key and value into k_cache, v_cache [B, local_kv_heads, L, hd] at its position,
  // then attends to the first lengths[b] (i32[B], = position + 1) cached keys of its sequence.
  Tensor decode(const Tensor& x, const Tensor& positions, const Tensor& lengths, Tensor& k_cache,
                Tensor& v_cache) const;

  int64_t head_dim() const { return head_dim_; }
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }

 private:
  ops::AttentionShape shape(int64_t batch) const;
  // The document starts rope and the attention kernel read (undefined where the option is off).
  Tensor rope_starts(const Saved& saved) const { return config_.document_positions ? saved.doc_starts : Tensor(); }
  Tensor mask_starts(const Saved& saved) const { return config_.document_mask ? saved.doc_starts : Tensor(); }

  // q, k, v of x: the projections, their biases and QK-norm (rope not yet applied).
  void project(const Tensor& x, Saved& saved) const;
  // Rotary positions on q and k (inverse: the backward's rotation back).
  void rotate(Tensor& q, Tensor& k, const Saved& saved, bool inverse) const;

  ParamStore* store_;
  AttentionConfig config_;
  TpGroup tp_;
  int64_t head_dim_, local_heads_, local_kv_heads_;
  ParamId wq_, wk_, wv_, wo_;
  ParamId bq_ = -1, bk_ = -1, bv_ = -1, bo_ = -1;
  std::unique_ptr<Norm> q_norm_, k_norm_;
};

}  // namespace moe

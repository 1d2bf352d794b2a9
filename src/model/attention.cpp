// Self-attention module: parameters "<prefix>.wq/.wk/.wv" [d, heads*hd] and "<prefix>.wo" (biases
// ".bq/.bk/.bv/.bo", QK-norm ".q_norm/.k_norm.weight"), whole or split by heads over the TP group.
#include "src/model/attention.h"

#include "src/nn/linear.h"
#include "src/ops/kv_cache_ops.h"

namespace moe {

const char* attention_mask_name(AttentionMask mask) {
  switch (mask) {
    case AttentionMask::causal: return "causal";
    case AttentionMask::bidirectional: return "bidirectional";
  }
  return "?";
}

Attention::Attention(ParamStore& store, const std::string& prefix, const AttentionConfig& config, TpGroup tp)
    : store_(&store), config_(config), tp_(tp) {
  const int64_t d = config.d_model;
  MOE_CHECK(config.num_heads > 0 && config.num_kv_heads > 0 && d % config.num_heads == 0 &&
                config.num_heads % config.num_kv_heads == 0,
            "attention '", prefix, "': d_model ", d, ", ", config.num_heads, " heads and ", config.num_kv_heads,
            " kv heads do not form whole heads and groups");
  MOE_CHECK(config.num_heads % tp.size() == 0 && config.num_kv_heads % tp.size() == 0, "attention '", prefix,
            "': tensor parallelism splits whole heads, but ", config.num_heads, " query heads and ",
            config.num_kv_heads, " kv heads do not both divide by parallel.tp = ", tp.size());
  MOE_CHECK(!config.document_mask || config.mask == AttentionMask::causal, "attention '", prefix,
            "': model.reset_attention keeps attention inside documents of a causal model, but the objective's mask "
            "is ", attention_mask_name(config.mask));
  head_dim_ = d / config.num_heads;
  local_heads_ = config.num_heads / tp.size();
  local_kv_heads_ = config.num_kv_heads / tp.size();
  const int64_t q_cols = config.num_heads * head_dim_, kv_cols = config.num_kv_heads * head_dim_;
  wq_ = add_column_parallel(store, prefix + ".wq", {d, q_cols}, 1, head_dim_, ParamKind::weight, config.init_std, tp);
  wk_ = add_column_parallel(store, prefix + ".wk", {d, kv_cols}, 1, head_dim_, ParamKind::weight, config.init_std, tp);
  wv_ = add_column_parallel(store, prefix + ".wv", {d, kv_cols}, 1, head_dim_, ParamKind::weight, config.init_std, tp);
  wo_ = add_row_parallel(store, prefix + ".wo", {q_cols, d}, head_dim_, ParamKind::weight, config.out_init_std, tp);
  if (config.qkv_bias || config.out_bias) {
    bq_ = add_column_parallel_bias(store, prefix + ".bq", q_cols, 1, head_dim_, tp);
    bk_ = add_column_parallel_bias(store, prefix + ".bk", kv_cols, 1, head_dim_, tp);
    bv_ = add_column_parallel_bias(store, prefix + ".bv", kv_cols, 1, head_dim_, tp);
  }
  if (config.out_bias) {  // replicated: added once, after the row-parallel all-reduce
    bo_ = store.add(prefix + ".bo", {d}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::zeros);
  }
  if (config.qk_norm) {
    MOE_CHECK(!tp.active(), "attention '", prefix, "': model.qk_norm normalises the whole q and k projections, "
              "which parallel.tp = ", tp.size(), " splits");
    q_norm_ = std::make_unique<Norm>(store, prefix + ".q_norm", q_cols, NormKind::rmsnorm, config.qk_norm_eps);
    k_norm_ = std::make_unique<Norm>(store, prefix + ".k_norm", kv_cols, NormKind::rmsnorm, config.qk_norm_eps);
  }
}

void Attention::project(const Tensor& x, Saved& saved) const {
  saved.q = linear_forward(x, store_->param(wq_));
  saved.k = linear_forward(x, store_->param(wk_));
  saved.v = linear_forward(x, store_->param(wv_));
  if (bq_ >= 0) {
    ops::add_bias(saved.q, store_->param(bq_));
    ops::add_bias(saved.k, store_->param(bk_));
    ops::add_bias(saved.v, store_->param(bv_));
  }
  if (q_norm_) {
    saved.q = q_norm_->forward(saved.q, saved.q_norm);
    saved.k = k_norm_->forward(saved.k, saved.k_norm);
  }
}

void Attention::rotate(Tensor& q, Tensor& k, const Saved& saved, bool inverse) const {
  if (!config_.rope) return;
  // Rotary angles depend on the position and the index within a head, never on the head.
  ops::rope(q, local_heads_, config_.seq_len, config_.rope_theta, inverse, rope_starts(saved), config_.rope_scaling);
  ops::rope(k, local_kv_heads_, config_.seq_len, config_.rope_theta, inverse, rope_starts(saved),
            config_.rope_scaling);
}

ops::AttentionShape Attention::shape(int64_t batch) const {
  // Causal: query i sees keys 0..i (next-token prediction); bidirectional: every key of its sequence.
  return {batch, config_.seq_len, local_heads_, local_kv_heads_, head_dim_, config_.mask == AttentionMask::causal};
}

Tensor Attention::forward(const Tensor& x, int64_t batch, Saved& saved, const Tensor& doc_starts) const {
  MOE_CHECK(doc_starts.defined() || !(config_.document_positions || config_.document_mask),
            "attention: document positions or masking (model.reset_positions / reset_attention) need the batch's "
            "document starts");
  saved.x = x;  // sequence parallelism: this rank's tokens only, gathered again in backward
  saved.doc_starts = doc_starts;
  project(tp_.gather_tokens(x), saved);
  rotate(saved.q, saved.k, saved, false);
  saved.out = empty_like(saved.q);
  saved.lse = Tensor::empty({batch, local_heads_, config_.seq_len}, ops::accum_dtype(x.dtype()), x.device());
  ops::attention_forward(saved.q, saved.k, saved.v, saved.out, saved.lse, shape(batch), mask_starts(saved));
  Tensor partial = linear_forward(saved.out, store_->param(wo_));
  // The row-parallel partial products summed over the group (sequence parallelism: each rank
  // keeps the sums of its tokens).
  Tensor y = tp_.reduce_tokens(partial);
  if (bo_ >= 0) ops::add_bias(y, store_->param(bo_));
  return y;
}

Tensor Attention::decode(const Tensor& x, const Tensor& positions, const Tensor& lengths, Tensor& k_cache,
                         Tensor& v_cache) const {
  MOE_CHECK(!config_.document_positions && !config_.document_mask,
            "attention: cached decoding does not support document positions or masking (model.reset_positions / "
            "reset_attention)");
  Tensor q = linear_forward(x, store_->param(wq_));
  Tensor k = linear_forward(x, store_->param(wk_));
  Tensor v = linear_forward(x, store_->param(wv_));
  if (config_.rope) {
    ops::rope_at(q, local_heads_, positions, config_.rope_theta, config_.rope_scaling);
    ops::rope_at(k, local_kv_heads_, positions, config_.rope_theta, config_.rope_scaling);
  }
  ops::kv_cache_write(k, positions, k_cache);
  ops::kv_cache_write(v, positions, v_cache);
  Tensor out = empty_like(q);
  ops::decode_attention(q, k_cache, v_cache, lengths, out);
  Tensor y = linear_forward(out, store_->param(wo_));
  tp_.all_reduce(y);  // the row-parallel partial products summed over the group
  return y;
}

Tensor Attention::backward(const Saved& saved, const Tensor& dy, int64_t batch) const {
  if (bo_ >= 0) {
    Tensor dbo = store_->grad(bo_);
    ops::bias_backward(dy, dbo);
  }
  Tensor dout = empty_like(saved.out);
  {
    Tensor dwo = store_->grad(wo_);
    linear_backward(saved.out, store_->param(wo_), tp_.gather_tokens(dy), dwo, dout);
  }

  Tensor dq = empty_like(saved.q), dk = empty_like(saved.k), dv = empty_like(saved.v);
  ops::attention_backward(saved.q, saved.k, saved.v, saved.out, saved.lse, dout, dq, dk, dv, shape(batch), Tensor(),
                          mask_starts(saved));
  // The rotation is orthogonal: its transpose (the backward) is the inverse rotation.
  rotate(dq, dk, saved, true);
  if (q_norm_) {
    dq = q_norm_->backward(saved.q_norm, dq);
    dk = k_norm_->backward(saved.k_norm, dk);
  }
  if (bq_ >= 0) {
    Tensor dbq = store_->grad(bq_), dbk = store_->grad(bk_), dbv = store_->grad(bv_);
    ops::bias_backward(dq, dbq);
    ops::bias_backward(dk, dbk);
    ops::bias_backward(dv, dbv);
  }
  const Tensor x = tp_.gather_tokens(saved.x);
  Tensor dx = empty_like(x);
  Tensor dwq = store_->grad(wq_), dwk = store_->grad(wk_), dwv = store_->grad(wv_);
  linear_backward(x, store_->param(wq_), dq, dwq, dx, false);
  linear_backward(x, store_->param(wk_), dk, dwk, dx, true);
  linear_backward(x, store_->param(wv_), dv, dwv, dx, true);
  // Each rank's heads contribute part of the input's gradient: summed over the group (sequence
  // parallelism: reduce-scattered to each rank's tokens).
  return tp_.reduce_tokens(dx);
}

}  // namespace moe

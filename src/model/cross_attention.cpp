// Cross-attention module: the q projection of the decoder's stream, k and v projections of the
// encoder's output, non-causal attention with kv_seq_len = the encoder's length, output projection.
#include "src/model/cross_attention.h"

#include "src/nn/linear.h"

namespace moe {

CrossAttention::CrossAttention(ParamStore& store, const std::string& prefix, const CrossAttentionConfig& config)
    : store_(&store), config_(config) {
  const int64_t d = config.d_model;
  MOE_CHECK(config.num_heads > 0 && config.num_kv_heads > 0 && d % config.num_heads == 0 &&
                config.num_heads % config.num_kv_heads == 0,
            "cross-attention '", prefix, "': d_model ", d, ", ", config.num_heads, " heads and ", config.num_kv_heads,
            " kv heads do not form whole heads and groups");
  MOE_CHECK(config.seq_len > 0 && config.memory_len > 0, "cross-attention '", prefix, "': ", config.seq_len,
            " queries and ", config.memory_len, " keys per sequence must both be positive");
  head_dim_ = d / config.num_heads;
  const int64_t q_cols = config.num_heads * head_dim_, kv_cols = config.num_kv_heads * head_dim_;
  wq_ = store.add(prefix + ".wq", {d, q_cols}, ParamGroup::dense, ParamKind::weight, ParamInit::normal, config.init_std);
  wk_ = store.add(prefix + ".wk", {d, kv_cols}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.init_std);
  wv_ = store.add(prefix + ".wv", {d, kv_cols}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.init_std);
  wo_ = store.add(prefix + ".wo", {q_cols, d}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.out_init_std);
}

ops::AttentionShape CrossAttention::shape(int64_t batch) const {
  ops::AttentionShape s{batch, config_.seq_len, config_.num_heads, config_.num_kv_heads, head_dim_, false};
  s.kv_seq_len = config_.memory_len;
  return s;
}

Tensor CrossAttention::forward(const Tensor& x, const Tensor& memory, int64_t batch, Saved& saved) const {
  MOE_CHECK(x.ndim() == 2 && x.size(0) == batch * config_.seq_len && memory.ndim() == 2 &&
                memory.size(0) == batch * config_.memory_len,
            "cross-attention: x ", shape_str(x.shape()), " and memory ", shape_str(memory.shape()), " are not ", batch,
            " sequences of ", config_.seq_len, " and ", config_.memory_len, " positions");
  saved.x = x;
  saved.memory = memory;
  saved.q = linear_forward(x, store_->param(wq_));
  saved.k = linear_forward(memory, store_->param(wk_));
  saved.v = linear_forward(memory, store_->param(wv_));
  saved.out = empty_like(saved.q);
  saved.lse = Tensor::empty({batch, config_.num_heads, config_.seq_len}, ops::accum_dtype(x.dtype()), x.device());
  ops::attention_forward(saved.q, saved.k, saved.v, saved.out, saved.lse, shape(batch));
  return linear_forward(saved.out, store_->param(wo_));
}

Tensor CrossAttention::backward(const Saved& saved, const Tensor& dy, int64_t batch, Tensor& d_memory) const {
  Tensor dout = empty_like(saved.out);
  Tensor dwo = store_->grad(wo_);
  linear_backward(saved.out, store_->param(wo_), dy, dwo, dout);
  Tensor dq = empty_like(saved.q), dk = empty_like(saved.k), dv = empty_like(saved.v);
  ops::attention_backward(saved.q, saved.k, saved.v, saved.out, saved.lse, dout, dq, dk, dv, shape(batch));
  Tensor dx = empty_like(saved.x);
  Tensor dwq = store_->grad(wq_), dwk = store_->grad(wk_), dwv = store_->grad(wv_);
  linear_backward(saved.x, store_->param(wq_), dq, dwq, dx, false);
  linear_backward(saved.memory, store_->param(wk_), dk, dwk, d_memory, true);
  linear_backward(saved.memory, store_->param(wv_), dv, dwv, d_memory, true);
  return dx;
}

}  // namespace moe

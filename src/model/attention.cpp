// Self-attention module: parameters "<prefix>.wq/.wk/.wv" [d, heads*hd] and "<prefix>.wo".
#include "src/model/attention.h"

#include "src/model/linear.h"

namespace moe {

Attention::Attention(ParamStore& store, const std::string& prefix, const AttentionConfig& config)
    : store_(&store), config_(config), head_dim_(config.d_model / config.num_heads) {
  int64_t d = config.d_model;
  wq_ = store.add(prefix + ".wq", {d, config.num_heads * head_dim_}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.init_std);
  wk_ = store.add(prefix + ".wk", {d, config.num_kv_heads * head_dim_}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.init_std);
  wv_ = store.add(prefix + ".wv", {d, config.num_kv_heads * head_dim_}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.init_std);
  wo_ = store.add(prefix + ".wo", {config.num_heads * head_dim_, d}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                  config.out_init_std);
}

ops::AttentionShape Attention::shape(int64_t batch) const {
  return {batch, config_.seq_len, config_.num_heads, config_.num_kv_heads, head_dim_};
}

Tensor Attention::forward(const Tensor& x, int64_t batch, Saved& saved) const {
  saved.x = x;
  saved.q = linear_forward(x, store_->param(wq_));
  saved.k = linear_forward(x, store_->param(wk_));
  saved.v = linear_forward(x, store_->param(wv_));
  if (config_.rope) {
    ops::rope(saved.q, config_.num_heads, config_.seq_len, config_.rope_theta, false);
    ops::rope(saved.k, config_.num_kv_heads, config_.seq_len, config_.rope_theta, false);
  }
  saved.out = empty_like(saved.q);
  saved.lse = Tensor::empty({batch, config_.num_heads, config_.seq_len}, ops::accum_dtype(x.dtype()), x.device());
  ops::attention_forward(saved.q, saved.k, saved.v, saved.out, saved.lse, shape(batch));
  return linear_forward(saved.out, store_->param(wo_));
}

Tensor Attention::backward(const Saved& saved, const Tensor& dy, int64_t batch) const {
  Tensor dout = empty_like(saved.out);
  Tensor dwo = store_->grad(wo_);
  linear_backward(saved.out, store_->param(wo_), dy, dwo, dout);

  Tensor dq = empty_like(saved.q), dk = empty_like(saved.k), dv = empty_like(saved.v);
  ops::attention_backward(saved.q, saved.k, saved.v, saved.out, saved.lse, dout, dq, dk, dv, shape(batch));
  if (config_.rope) {
    // The rotation is orthogonal: its transpose (the backward) is the inverse rotation.
    ops::rope(dq, config_.num_heads, config_.seq_len, config_.rope_theta, true);
    ops::rope(dk, config_.num_kv_heads, config_.seq_len, config_.rope_theta, true);
  }
  Tensor dx = empty_like(saved.x);
  Tensor dwq = store_->grad(wq_), dwk = store_->grad(wk_), dwv = store_->grad(wv_);
  linear_backward(saved.x, store_->param(wq_), dq, dwq, dx, false);
  linear_backward(saved.x, store_->param(wk_), dk, dwk, dx, true);
  linear_backward(saved.x, store_->param(wv_), dv, dwv, dx, true);
  return dx;
}

}  // namespace moe

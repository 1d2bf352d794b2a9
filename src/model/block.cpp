// Transformer block: parameters under "layers.<i>." (attn_norm, attn, ffn_norm, ffn | moe; with
// cross-attention also cross_norm, cross_attn).
#include "src/model/block.h"

#include "src/ops/ops.h"

namespace moe {

Block::Block(ParamStore& store, const std::string& prefix, NormKind norm, float norm_eps, const AttentionConfig& attn,
             std::unique_ptr<DenseFfn> dense, std::unique_ptr<MoeLayer> moe, TpGroup tp,
             const CrossAttentionConfig* cross)
    : attn_norm_(store, prefix + ".attn_norm", attn.d_model, norm, norm_eps),
      ffn_norm_(store, prefix + ".ffn_norm", attn.d_model, norm, norm_eps),
      attn_(store, prefix + ".attn", attn, tp),
      dense_(std::move(dense)),
      moe_(std::move(moe)) {
  MOE_CHECK((dense_ != nullptr) != (moe_ != nullptr), "block ", prefix, " needs exactly one FFN");
  if (cross != nullptr) {
    MOE_CHECK(!tp.active(), "block ", prefix, ": cross-attention runs without tensor parallelism (parallel.tp = 1)");
    cross_norm_ = std::make_unique<Norm>(store, prefix + ".cross_norm", attn.d_model, norm, norm_eps);
    cross_ = std::make_unique<CrossAttention>(store, prefix + ".cross_attn", *cross);
  }
}

Tensor Block::forward(const Tensor& x, int64_t batch, const RouteInputs& inputs, BlockSaved& saved,
                      bool collect_stats, const Tensor& doc_starts, const Tensor& memory) const {
  Tensor attn_out = attention_forward(x, batch, saved, doc_starts);
  if (!cross_) return ffn_forward(x, attn_out, inputs, saved, collect_stats);
  MOE_CHECK(memory.defined(), "block: cross-attention needs the encoder's output");
  Tensor h;  // x + attn_out, written by the fused add + norm
  Tensor normed = cross_norm_->forward_add(x, attn_out, h, saved.cross_norm);
  Tensor cross_out = cross_->forward(normed, memory, batch, saved.cross);
  return ffn_forward(h, cross_out, inputs, saved, collect_stats);
}

Tensor Block::attention_forward(const Tensor& x, int64_t batch, BlockSaved& saved, const Tensor& doc_starts) const {
  saved.input = x;
  return attn_.forward(attn_norm_.forward(x, saved.attn_norm), batch, saved.attn, doc_starts);
}

Tensor Block::decode(const Tensor& x, const RouteInputs& inputs, const Tensor& positions, const Tensor& lengths,
                     Tensor& k_cache, Tensor& v_cache) const {
  BlockSaved saved;  // nothing is kept: no backward follows
  Tensor attn_out = attn_.decode(attn_norm_.forward(x, saved.attn_norm), positions, lengths, k_cache, v_cache);
  return ffn_forward(x, attn_out, inputs, saved, false);
}

Tensor Block::ffn_forward(const Tensor& x, const Tensor& attn_out, const RouteInputs& inputs, BlockSaved& saved,
                          bool collect_stats, const std::function<void()>& other) const {
  Tensor h;  // the residual stream x + attn_out, written by the fused add + norm
  Tensor normed = ffn_norm_.forward_add(x, attn_out, h, saved.ffn_norm);
  if (moe_) return moe_->forward(normed, inputs, saved.moe, collect_stats, other, h);  // adds h itself
  Tensor ffn_out = dense_->forward(normed, saved.ffn);
  if (other) other();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  ops::add(h, ffn_out, y);
  return y;
}

Tensor Block::backward(const BlockSaved& saved, const Tensor& dy, int64_t batch, float aux_scale,
                       Tensor* d_memory) const {
  Tensor dh = ffn_backward(saved, dy, aux_scale);
  if (cross_) {
    MOE_CHECK(d_memory != nullptr && d_memory->defined(), "block: cross-attention's backward needs the memory's "
              "gradient to add to");
    Tensor dcross_in = cross_->backward(saved.cross, dh, batch, *d_memory);
    dh = cross_norm_->backward(saved.cross_norm, dcross_in, dh);  // + dh: the residual path, fused
  }
  return attention_backward(saved, dh, batch);
}

Tensor Block::ffn_backward(const BlockSaved& saved, const Tensor& dy, float aux_scale,
                           const std::function<void()>& other) const {
  Tensor dnormed;
  if (moe_) {
    dnormed = moe_->backward(saved.moe, dy, aux_scale, other);
  } else {
    dnormed = dense_->backward(saved.ffn, dy);
    if (other) other();
  }
  return ffn_norm_.backward(saved.ffn_norm, dnormed, dy);  // + dy: the residual path, fused
}

Tensor Block::attention_backward(const BlockSaved& saved, const Tensor& dh, int64_t batch) const {
  Tensor dattn_in = attn_.backward(saved.attn, dh, batch);
  return attn_norm_.backward(saved.attn_norm, dattn_in, dh);  // + dh: the residual path, fused
}

}  // namespace moe

// One pre-norm transformer block: x + Attention(Norm(x)), then h + FFN(Norm(h)) where the
// FFN is dense or an MoE layer. A decoder block of an encoder-decoder has a cross-attention
// sublayer between them: h + CrossAttention(Norm(h), memory).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "experts/moe_layer.h"
#include "src/model/attention.h"
#include "src/model/cross_attention.h"
#include "src/nn/dense_ffn.h"
#include "src/model/norm.h"

namespace moe {

struct BlockSaved {
  Tensor input;  // the block's input x (kept alone under activation recomputation)
  Norm::Saved attn_norm, ffn_norm;
  Attention::Saved attn;
  Norm::Saved cross_norm;  // decoder blocks of an encoder-decoder
  CrossAttention::Saved cross;
  FfnSaved ffn;
  MoeLayerSaved moe;
};

class Block {
 public:
  Block(ParamStore& store, const std::string& prefix, NormKind norm, float norm_eps, const AttentionConfig& attn,
        std::unique_ptr<DenseFfn> dense, std::unique_ptr<MoeLayer> moe, TpGroup tp = {},
        const CrossAttentionConfig* cross = nullptr);
  // x[B*S,d] -> y[B*S,d]; doc_starts: the batch's document starts (Attention::forward); memory
  // [B*Skv,d]: the encoder's output, which a block with cross-attention needs
  Tensor forward(const Tensor& x, int64_t batch, const RouteInputs& inputs, BlockSaved& saved,
                 bool collect_stats = false, const Tensor& doc_starts = Tensor(), const Tensor& memory = Tensor()) const;
  // dy[B*S,d] -> dx[B*S,d]; a block with cross-attention adds the memory's gradient to *d_memory
  Tensor backward(const BlockSaved& saved, const Tensor& dy, int64_t batch, float aux_scale,
                  Tensor* d_memory = nullptr) const;
  // The two halves of forward and backward (a block without cross-attention), for running two
  // micro-batches interleaved (Model::forward_pair). attention_forward: x -> the attention's output
  // (before the residual add); ffn_forward: x + attn_out, then + FFN(Norm(.)) -> y. `other` runs
  // once inside the FFN: while an MoE layer's all-to-all is in flight, after a dense FFN.
  Tensor attention_forward(const Tensor& x, int64_t batch, BlockSaved& saved, const Tensor& doc_starts) const;
  Tensor ffn_forward(const Tensor& x, const Tensor& attn_out, const RouteInputs& inputs, BlockSaved& saved,
                     bool collect_stats, const std::function<void()>& other = {}) const;
  // ffn_backward: dy -> dh, the gradient of x + attn_out (`other` as in ffn_forward);
  // attention_backward: dh -> dx.
  Tensor ffn_backward(const BlockSaved& saved, const Tensor& dy, float aux_scale,
                      const std::function<void()>& other = {}) const;
  Tensor attention_backward(const BlockSaved& saved, const Tensor& dh, int64_t batch) const;
  // Cached decoding: x[B,d] (one new token per sequence) -> y[B,d]; Attention::decode with this
  // block's caches, then the FFN as in forward (routers see each new token alone).
  Tensor decode(const Tensor& x, const RouteInputs& inputs, const Tensor& positions, const Tensor& lengths,
                Tensor& k_cache, Tensor& v_cache) const;
  bool is_moe() const { return moe_ != nullptr; }
  bool has_cross_attention() const { return cross_ != nullptr; }
  const Attention& attention() const { return attn_; }
  const MoeLayer& moe() const { return *moe_; }

 private:
  Norm attn_norm_, ffn_norm_;
  Attention attn_;
  std::unique_ptr<DenseFfn> dense_;
  std::unique_ptr<MoeLayer> moe_;
  std::unique_ptr<Norm> cross_norm_;
  std::unique_ptr<CrossAttention> cross_;
};

}  // namespace moe

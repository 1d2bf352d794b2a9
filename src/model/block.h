// One pre-norm transformer block: x + Attention(Norm(x)), then h + FFN(Norm(h)) where the
// FFN is dense or an MoE layer.
#pragma once

#include <memory>
#include <string>

#include "experts/moe_layer.h"
#include "src/model/attention.h"
#include "src/nn/dense_ffn.h"
#include "src/model/norm.h"

namespace moe {

struct BlockSaved {
  Tensor input;  // the block's input x (kept alone under activation recomputation)
  Norm::Saved attn_norm, ffn_norm;
  Attention::Saved attn;
  FfnSaved ffn;
  MoeLayerSaved moe;
};

class Block {
 public:
  Block(ParamStore& store, const std::string& prefix, NormKind norm, float norm_eps, const AttentionConfig& attn,
        std::unique_ptr<DenseFfn> dense, std::unique_ptr<MoeLayer> moe, TpGroup tp = {});
  // x[B*S,d] -> y[B*S,d]; doc_starts: the batch's document starts (Attention::forward)
  Tensor forward(const Tensor& x, int64_t batch, const RouteInputs& inputs, BlockSaved& saved,
                 bool collect_stats = false, const Tensor& doc_starts = Tensor()) const;
  // dy[B*S,d] -> dx[B*S,d]
  Tensor backward(const BlockSaved& saved, const Tensor& dy, int64_t batch, float aux_scale) const;
  // Cached decoding: x[B,d] (one new token per sequence) -> y[B,d]; Attention::decode with this
  // block's caches, then the FFN as in forward (routers see each new token alone).
  Tensor decode(const Tensor& x, const RouteInputs& inputs, const Tensor& positions, const Tensor& lengths,
                Tensor& k_cache, Tensor& v_cache) const;
  bool is_moe() const { return moe_ != nullptr; }
  const Attention& attention() const { return attn_; }
  const MoeLayer& moe() const { return *moe_; }

 private:
  // The second half of the block: h = x + attn_out, then h + FFN(Norm(h)).
  Tensor ffn_residual(const Tensor& x, const Tensor& attn_out, const RouteInputs& inputs, BlockSaved& saved,
                      bool collect_stats) const;

  Norm attn_norm_, ffn_norm_;
  Attention attn_;
  std::unique_ptr<DenseFfn> dense_;
  std::unique_ptr<MoeLayer> moe_;
};

}  // namespace moe

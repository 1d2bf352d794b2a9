// Model assembly and the full forward/backward: parameters "embed.tokens", "embed.positions",
// "layers.<i>.*", "final_norm.*", "lm_head.weight" (untied only).
#include "src/model/model.h"

#include <cmath>

#include "src/model/linear.h"
#include "src/ops/ops.h"

namespace moe {

bool is_moe_layer(const ModelConfig& model, const MoeConfig& moe, int64_t layer) {
  if (moe.num_experts <= 0 || layer < moe.first_dense || layer >= model.num_layers) return false;
  return (layer - moe.first_dense + 1) % moe.every == 0;
}

Model::Model(const ModelConfig& model, const MoeConfig& moe) : config_(model), moe_config_(moe) {
  const ModelConfig& c = model;
  double out_std = c.init_std / std::sqrt(2.0 * static_cast<double>(c.num_layers));  // GPT-2 residual scaling
  tokens_ = store_.add("embed.tokens", {c.vocab_size, c.d_model}, ParamGroup::dense, ParamKind::embedding,
                       ParamInit::normal, c.init_std);
  if (c.positions == "learned") {
    positions_ = store_.add("embed.positions", {c.seq_len, c.d_model}, ParamGroup::dense, ParamKind::embedding,
                            ParamInit::normal, c.init_std);
  }
  NormKind norm = norm_kind_from_name(c.norm);
  AttentionConfig attn{c.d_model, c.num_heads, c.num_kv_heads, c.seq_len, c.positions == "rope",
                       static_cast<float>(c.rope_theta), c.init_std, out_std};
  ops::Activation dense_act = ops::activation_from_name(c.activation);
  ops::Activation expert_act = ops::activation_from_name(moe.activation.empty() ? c.activation : moe.activation);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    std::string prefix = "layers." + std::to_string(i);
    std::unique_ptr<DenseFfn> dense;
    std::unique_ptr<MoeLayer> moe_layer;
    if (is_moe_layer(c, moe, i)) {
      MoeLayerConfig mc{c.d_model, moe.num_experts, moe.top_k, moe.d_expert, moe.renormalize, expert_act,
                        moe.aux_loss_coef, c.init_std, out_std};
      moe_layer = std::make_unique<MoeLayer>(store_, prefix + ".moe", mc);
    } else {
      dense = std::make_unique<DenseFfn>(store_, prefix + ".ffn", c.d_model, c.d_ff, dense_act, c.init_std, out_std);
    }
    blocks_.push_back(std::make_unique<Block>(store_, prefix, norm, static_cast<float>(c.norm_eps), attn,
                                              std::move(dense), std::move(moe_layer)));
  }
  final_norm_ = std::make_unique<Norm>(store_, "final_norm", c.d_model, norm, static_cast<float>(c.norm_eps));
  if (!c.tie_embeddings) {
    lm_head_ = store_.add("lm_head.weight", {c.d_model, c.vocab_size}, ParamGroup::dense, ParamKind::weight,
                          ParamInit::normal, c.init_std);
  }
}

void Model::allocate(Device device, DType compute_dtype) { store_.allocate(device, compute_dtype); }

int64_t Model::num_moe_layers() const {
  int64_t n = 0;
  for (const auto& b : blocks_) n += b->is_moe() ? 1 : 0;
  return n;
}

int64_t Model::active_params() const {
  int64_t total = 0;
  for (const ParamInfo& p : store_.infos()) {
    if (p.name == "embed.tokens" && !config_.tie_embeddings) continue;  // a lookup, not a matmul
    if (p.name == "embed.positions") continue;
    if (p.group == ParamGroup::expert) {
      total += p.numel() / moe_config_.num_experts * moe_config_.top_k;
    } else {
      total += p.numel();
    }
  }
  return total;
}

Tensor Model::embed(const Tensor& inputs) const {
  Tensor table = store_.param(tokens_);
  Tensor x = Tensor::empty({inputs.numel(), config_.d_model}, table.dtype(), table.device());
  ops::embedding_forward(inputs, table, x);
  if (positions_ >= 0) ops::position_add_forward(x, store_.param(positions_), config_.seq_len);
  return x;
}

Tensor Model::run_blocks(const Tensor& x_in, const Tensor& inputs, int64_t batch_size, ModelSaved& saved) const {
  saved.blocks.assign(blocks_.size(), BlockSaved{});
  RouteInputs route{&inputs, config_.seq_len, true};
  Tensor x = x_in;
  for (size_t i = 0; i < blocks_.size(); ++i) x = blocks_[i]->forward(x, batch_size, route, saved.blocks[i]);
  saved.hidden = final_norm_->forward(x, saved.final_norm);
  Tensor head = lm_head_ >= 0 ? store_.param(lm_head_) : store_.param(tokens_);
  saved.logits = Tensor::empty({x.size(0), config_.vocab_size}, x.dtype(), x.device());
  ops::matmul(saved.hidden, false, head, lm_head_ < 0, saved.logits);
  return saved.logits;
}

ForwardOutput Model::forward(const Batch& batch, ModelSaved& saved) const {
  MOE_CHECK(batch.inputs.numel() == batch.batch_size * config_.seq_len, "batch of ", batch.inputs.numel(),
            " tokens is not ", batch.batch_size, " sequences of ", config_.seq_len);
  run_blocks(embed(batch.inputs), batch.inputs, batch.batch_size, saved);
  DType accum = ops::accum_dtype(saved.logits.dtype());
  Tensor losses = Tensor::empty({saved.logits.size(0)}, accum, saved.logits.device());
  saved.lse = Tensor::empty({saved.logits.size(0)}, accum, saved.logits.device());
  ops::cross_entropy_forward(saved.logits, batch.targets, losses, saved.lse);

  ForwardOutput out;
  out.loss_sum = ops::sum(losses);
  for (int32_t t : batch.targets.to_vector<int32_t>()) out.num_targets += t >= 0 ? 1 : 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!blocks_[i]->is_moe()) continue;
    out.moe_stats.push_back(saved.blocks[i].moe.stats);
    out.moe_layer_index.push_back(static_cast<int>(i));
    out.aux_loss += saved.blocks[i].moe.stats.aux_loss;
  }
  return out;
}

void Model::backward(const Batch& batch, const ModelSaved& saved, float loss_scale, float aux_scale) const {
  Tensor dlogits = empty_like(saved.logits);
  ops::cross_entropy_backward(saved.logits, batch.targets, saved.lse, loss_scale, dlogits);
  Tensor dhidden = empty_like(saved.hidden);
  if (lm_head_ >= 0) {
    Tensor dhead = store_.grad(lm_head_);
    linear_backward(saved.hidden, store_.param(lm_head_), dlogits, dhead, dhidden);
  } else {
    // logits = h @ E^T: dE += dlogits^T @ h, dh = dlogits @ E
    Tensor dtable = store_.grad(tokens_);
    ops::matmul(dlogits, true, saved.hidden, false, dtable, 1.0f, 1.0f);
    ops::matmul(dlogits, false, store_.param(tokens_), false, dhidden);
  }
  Tensor dx = final_norm_->backward(saved.final_norm, dhidden);
  for (size_t i = blocks_.size(); i-- > 0;) dx = blocks_[i]->backward(saved.blocks[i], dx, batch.batch_size, aux_scale);
  if (positions_ >= 0) {
    Tensor dpos = store_.grad(positions_);
    ops::position_add_backward(dx, dpos, config_.seq_len);
  }
  Tensor dtable = store_.grad(tokens_);
  ops::embedding_backward(batch.inputs, dx, dtable);
}

Tensor Model::logits(const Tensor& inputs, int64_t batch_size) const {
  ModelSaved saved;
  return run_blocks(embed(inputs), inputs, batch_size, saved);
}

}  // namespace moe

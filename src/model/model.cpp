// Model assembly and the full forward/backward: parameters "embed.tokens", "embed.positions",
// "layers.<i>.*", "final_norm.*", "lm_head.weight" (untied only).
#include "src/model/model.h"

#include <cmath>

#include "routing/router_factory.h"
#include "routing/topk_router.h"
#include "src/model/linear.h"
#include "src/ops/ops.h"

namespace moe {

MoeLayerConfig moe_layer_config(const ModelConfig& c, const MoeConfig& moe, ops::Activation act, double out_std) {
  MoeLayerConfig mc;
  mc.d_model = c.d_model;
  mc.num_experts = moe.num_experts * moe.granularity;  // fine-grained: m*E experts of d_expert/m
  mc.d_expert = moe.d_expert / moe.granularity;
  mc.activation = act;
  mc.capacity_factor = moe.capacity_factor;
  mc.drop_order = moe.drop_order == "position" ? ops::DropOrder::by_position : ops::DropOrder::by_probability;
  mc.num_shared = moe.num_shared_experts;
  mc.d_shared = moe.d_shared > 0 ? moe.d_shared : mc.d_expert;
  mc.shared_gate = moe.shared_gate;
  mc.balancing.switch_coef = moe.aux_loss_coef;
  mc.balancing.importance_coef = moe.importance_loss_coef;
  mc.balancing.load_coef = moe.load_loss_coef;
  mc.balancing.z_coef = moe.z_loss_coef;
  mc.balancing.seq_coef = moe.seq_aux_loss_coef;
  mc.balancing.device_coef = moe.device_loss_coef;
  mc.balancing.device_groups = moe.device_groups;
  mc.init_std = c.init_std;
  mc.out_init_std = out_std;
  return mc;
}

bool is_moe_layer(const ModelConfig& model, const MoeConfig& moe, int64_t layer) {
  if (moe.num_experts <= 0 || layer < moe.first_dense || layer >= model.num_layers) return false;
  return (layer - moe.first_dense + 1) % moe.every == 0;
}

Model::Model(const ModelConfig& model, const MoeConfig& moe, Communicator* ep_group)
    : config_(model), moe_config_(moe) {
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
  size_t moe_index = 0;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    std::string prefix = "layers." + std::to_string(i);
    std::unique_ptr<DenseFfn> dense;
    std::unique_ptr<MoeLayer> moe_layer;
    if (is_moe_layer(c, moe, i)) {
      MoeLayerConfig mc = moe_layer_config(c, moe, expert_act, out_std);
      mc.ep_group = ep_group;
      RouterSpec spec{c.d_model, c.vocab_size, mc.num_experts, moe.top_k * moe.granularity, i, c.init_std};
      MoeConfig layer_moe = moe;  // moe.layer_routers picks this layer's router
      if (!moe.layer_routers.empty()) layer_moe.router = moe.layer_routers.at(moe_index);
      ++moe_index;
      moe_layer = std::make_unique<MoeLayer>(store_, prefix + ".moe", mc,
                                             make_router(store_, prefix + ".moe.router", layer_moe, spec));
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
    if (p.name == "embed.positions" || p.kind == ParamKind::buffer) continue;
    if (p.group == ParamGroup::expert) {
      // The whole expert tensor (all EP ranks' rows), k of its E experts active: (m*k)/(m*E) = k/E.
      total += shape_numel(p.full_shape) / moe_config_.num_experts * moe_config_.top_k;
    } else {
      total += p.numel();
    }
  }
  return total;
}

int64_t Model::total_params() const {
  int64_t total = 0;
  for (const ParamInfo& p : store_.infos()) total += p.is_split() ? shape_numel(p.full_shape) : p.numel();
  return total;
}

Tensor Model::embed(const Tensor& inputs) const {
  acquire("embed");
  Tensor table = store_.param(tokens_);
  Tensor x = Tensor::empty({inputs.numel(), config_.d_model}, table.dtype(), table.device());
  ops::embedding_forward(inputs, table, x);
  if (positions_ >= 0) ops::position_add_forward(x, store_.param(positions_), config_.seq_len);
  release("embed");
  return x;
}

Tensor Model::run_blocks(const Tensor& x_in, const Batch& batch, ModelSaved& saved) const {
  saved.blocks.assign(blocks_.size(), BlockSaved{});
  std::vector<int32_t> tokens = batch.inputs.to_vector<int32_t>();
  std::vector<int32_t> targets = batch.targets.defined() ? batch.targets.to_vector<int32_t>() : std::vector<int32_t>();
  RouteInputs route{&tokens, batch.targets.defined() ? &targets : nullptr, config_.seq_len, batch.training, 0};
  Tensor x = x_in;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    route.noise_seed = batch.noise_seed * 1000003ull + i;  // distinct gating noise per layer
    const std::string unit = "layers." + std::to_string(i);
    acquire(unit);
    x = blocks_[i]->forward(x, batch.batch_size, route, saved.blocks[i], batch.collect_stats);
    release(unit);
  }
  acquire("final_norm");
  saved.hidden = final_norm_->forward(x, saved.final_norm);
  release("final_norm");
  acquire(head_unit());
  Tensor head = lm_head_ >= 0 ? store_.param(lm_head_) : store_.param(tokens_);
  saved.logits = Tensor::empty({x.size(0), config_.vocab_size}, x.dtype(), x.device());
  ops::matmul(saved.hidden, false, head, lm_head_ < 0, saved.logits);
  release(head_unit());
  return saved.logits;
}

ForwardOutput Model::forward(const Batch& batch, ModelSaved& saved) const {
  MOE_CHECK(batch.inputs.numel() == batch.batch_size * config_.seq_len, "batch of ", batch.inputs.numel(),
            " tokens is not ", batch.batch_size, " sequences of ", config_.seq_len);
  run_blocks(embed(batch.inputs), batch, saved);
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
  acquire(head_unit());
  if (lm_head_ >= 0) {
    Tensor dhead = store_.grad(lm_head_);
    linear_backward(saved.hidden, store_.param(lm_head_), dlogits, dhead, dhidden);
  } else {
    // logits = h @ E^T: dE += dlogits^T @ h, dh = dlogits @ E
    Tensor dtable = store_.grad(tokens_);
    ops::matmul(dlogits, true, saved.hidden, false, dtable, 1.0f, 1.0f);
    ops::matmul(dlogits, false, store_.param(tokens_), false, dhidden);
  }
  release(head_unit());
  acquire("final_norm");
  Tensor dx = final_norm_->backward(saved.final_norm, dhidden);
  release("final_norm");
  for (size_t i = blocks_.size(); i-- > 0;) {
    const std::string unit = "layers." + std::to_string(i);
    acquire(unit);
    dx = blocks_[i]->backward(saved.blocks[i], dx, batch.batch_size, aux_scale);
    release(unit);
    if (grad_hook_) grad_hook_(unit);
  }
  if (positions_ >= 0) {
    Tensor dpos = store_.grad(positions_);
    ops::position_add_backward(dx, dpos, config_.seq_len);
  }
  Tensor dtable = store_.grad(tokens_);
  ops::embedding_backward(batch.inputs, dx, dtable);
}

Tensor Model::logits(const Tensor& inputs, int64_t batch_size) const {
  ModelSaved saved;
  Batch batch;
  batch.inputs = inputs;
  batch.batch_size = batch_size;
  batch.training = false;
  return run_blocks(embed(inputs), batch, saved);
}

void Model::set_switch_gradients(ModelSaved& saved, const std::vector<std::vector<double>>& grad_per_expert,
                                 const std::vector<double>& values) const {
  size_t next = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!blocks_[i]->is_moe()) continue;
    blocks_[i]->moe().set_switch_gradient(saved.blocks[i].moe, grad_per_expert.at(next), values.at(next));
    ++next;
  }
}

std::vector<std::vector<double>> Model::expert_biases() const {
  std::vector<std::vector<double>> out;
  for (const auto& block : blocks_) {
    if (!block->is_moe()) continue;
    const auto* router = dynamic_cast<const TopKRouter*>(&block->moe().router());
    bool has_bias = router != nullptr && router->bias_id() >= 0;
    out.push_back(has_bias ? store_.master(router->bias_id()).to_vector<double>() : std::vector<double>());
  }
  return out;
}

void Model::update_expert_biases(const std::vector<std::vector<int64_t>>& loads, double rate) {
  size_t next = 0;
  for (const auto& block : blocks_) {
    if (!block->is_moe()) continue;
    const auto& loads_here = loads.at(next++);
    const auto* router = dynamic_cast<const TopKRouter*>(&block->moe().router());
    if (router == nullptr || router->bias_id() < 0) continue;
    ParamId id = router->bias_id();
    std::vector<double> bias = store_.master(id).to_vector<double>();
    update_expert_bias(bias, loads_here, rate);
    store_.load_master_from_host(id, Tensor::from_vector(bias, {static_cast<int64_t>(bias.size())}, DType::f64));
  }
}

}  // namespace moe

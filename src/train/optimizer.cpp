// The AdamW update both optimizers share (runs of one weight-decay setting), AdamW over a
// whole store, and global-norm clipping over the flat gradient buffers.
#include "src/train/optimizer.h"

#include <cmath>

#include "src/ops/ops.h"

namespace moe {

bool adamw_decays(const ParamInfo& p, const OptimConfig& config) {
  switch (p.kind) {
    case ParamKind::weight: return true;
    case ParamKind::norm_or_bias: return config.decay_norms_and_biases;
    case ParamKind::embedding: return config.decay_embeddings;
    case ParamKind::buffer: return false;
  }
  return true;
}

AdamWUpdate::AdamWUpdate(const ParamStore& store, const OptimConfig& config, ParamGroup g, FlatRange own)
    : config_(config), own_(own) {
  for (const ParamInfo& p : store.infos()) {
    if (p.group != g || p.kind == ParamKind::buffer) continue;
    FlatRange part = intersect({p.offset, p.offset + p.numel()}, own);
    if (part.empty()) continue;
    const bool decay = adamw_decays(p, config);
    if (!runs_.empty() && runs_.back().range.end == part.begin && runs_.back().decay == decay) {
      runs_.back().range.end = part.end;
    } else {
      runs_.push_back({part, decay});
    }
  }
}

void AdamWUpdate::apply(const Tensor& master, const Tensor& grads, const Tensor& m, const Tensor& v, double lr,
                        int64_t step) const {
  ops::AdamWParams h;
  h.lr = static_cast<float>(lr);
  h.beta1 = static_cast<float>(config_.beta1);
  h.beta2 = static_cast<float>(config_.beta2);
  h.eps = static_cast<float>(config_.eps);
  h.step = step;
  for (const Run& run : runs_) {
    h.weight_decay = run.decay ? static_cast<float>(config_.weight_decay) : 0.0f;
    const int64_t begin = run.range.begin - own_.begin, end = run.range.end - own_.begin;
    Tensor p = master.rows(begin, end), mr = m.rows(begin, end), vr = v.rows(begin, end);
    ops::adamw_step(p, grads.rows(run.range.begin, run.range.end), mr, vr, h);
  }
}

AdamW::AdamW(ParamStore& store, const OptimConfig& config) : store_(&store), config_(config) {
  for (int g = 0; g < k_num_param_groups; ++g) {
    const auto group = static_cast<ParamGroup>(g);
    const Tensor& master = store.flat_master(group);
    m_[g] = Tensor::zeros(master.shape(), master.dtype(), master.device());
    v_[g] = Tensor::zeros(master.shape(), master.dtype(), master.device());
    update_[g] = AdamWUpdate(store, config, group, {0, store.group_numel(group)});
  }
}

bool AdamW::decays(const ParamInfo& p) const { return adamw_decays(p, config_); }

Tensor AdamW::view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const {
  const ParamInfo& p = store_->info(id);
  return buffers[static_cast<int>(p.group)].rows(p.offset, p.offset + p.numel()).view(p.shape);
}

void AdamW::step(double lr, int64_t step) {
  for (int g = 0; g < k_num_param_groups; ++g) {
    const auto group = static_cast<ParamGroup>(g);
    update_[g].apply(store_->flat_master(group), store_->flat_grads(group), m_[g], v_[g], lr, step);
  }
  store_->sync_params_from_master();
}

double clip_grad_norm(ParamStore& store, double max_norm) {
  double sum_sq = 0;
  for (int g = 0; g < k_num_param_groups; ++g) sum_sq += ops::sum_squares(store.flat_grads(static_cast<ParamGroup>(g)));
  double norm = std::sqrt(sum_sq);
  if (max_norm > 0 && norm > max_norm) {
    for (int g = 0; g < k_num_param_groups; ++g) {
      ops::scale(store.flat_grads(static_cast<ParamGroup>(g)), static_cast<float>(max_norm / norm));
    }
  }
  return norm;
}

}  // namespace moe

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

namespace {

// The runs of `own` in flat order, relative to own.begin: merged maximal runs of one kind.
std::vector<int64_t> adamw_runs(const ParamStore& store, const OptimConfig& config, ParamGroup g, FlatRange own) {
  std::vector<ops::AdamWRun> runs;
  auto push = [&](int64_t begin, int64_t end, ops::AdamWRunKind kind) {
    if (begin == end) return;
    if (!runs.empty() && runs.back().end == begin && runs.back().kind == kind) {
      runs.back().end = end;
    } else {
      runs.push_back({begin, end, kind});
    }
  };
  int64_t at = own.begin;
  for (const ParamInfo& p : store.infos()) {
    if (p.group != g) continue;
    FlatRange part = intersect({p.offset, p.offset + p.numel()}, own);
    if (part.empty()) continue;
    MOE_CHECK(part.begin >= at, "AdamW: parameter '", p.name, "' at flat offset ", p.offset,
              " is not in offset order within its group");
    push(at, part.begin, ops::AdamWRunKind::copy);  // a gap the compute copy still mirrors
    const ops::AdamWRunKind kind = p.kind == ParamKind::buffer ? ops::AdamWRunKind::copy
                                   : adamw_decays(p, config)   ? ops::AdamWRunKind::decay
                                                               : ops::AdamWRunKind::no_decay;
    push(part.begin, part.end, kind);
    at = part.end;
  }
  push(at, own.end, ops::AdamWRunKind::copy);
  std::vector<int64_t> flat;
  for (const ops::AdamWRun& r : runs) {
    flat.insert(flat.end(), {r.begin - own.begin, r.end - own.begin, static_cast<int64_t>(r.kind)});
  }
  return flat;
}

}  // namespace

AdamWUpdate::AdamWUpdate(const ParamStore& store, const OptimConfig& config, ParamGroup g, FlatRange own)
    : config_(config), own_(own) {
  std::vector<int64_t> flat = adamw_runs(store, config, g, own);
  runs_ = Tensor::from_vector(flat, {static_cast<int64_t>(flat.size() / 3), 3}, DType::i64, store.device());
}

void AdamWUpdate::apply(const Tensor& master, const Tensor& grads, const Tensor& m, const Tensor& v, double lr,
                        int64_t step, const Tensor& grad_scale, Tensor params) const {
  if (own_.empty()) return;
  ops::AdamWParams h;
  h.lr = static_cast<float>(lr);
  h.beta1 = static_cast<float>(config_.beta1);
  h.beta2 = static_cast<float>(config_.beta2);
  h.eps = static_cast<float>(config_.eps);
  h.weight_decay = static_cast<float>(config_.weight_decay);
  h.step = step;
  Tensor p = master, mr = m, vr = v;
  ops::adamw_fused(p, grads, mr, vr, runs_, grad_scale, h, params);
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
    update_[g].apply(store_->flat_master(group), store_->flat_grads(group), m_[g], v_[g], lr, step, {},
                     store_->compute_copy_of_master(group));
  }
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

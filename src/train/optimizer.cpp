// AdamW over parameter views (one call per parameter so weight decay follows its kind) and
// global-norm clipping over the flat gradient buffers.
#include "src/train/optimizer.h"

#include <cmath>

#include "src/ops/ops.h"

namespace moe {

AdamW::AdamW(ParamStore& store, const OptimConfig& config) : store_(&store), config_(config) {
  for (int g = 0; g < k_num_param_groups; ++g) {
    const Tensor& master = store.flat_master(static_cast<ParamGroup>(g));
    m_[g] = Tensor::zeros(master.shape(), master.dtype(), master.device());
    v_[g] = Tensor::zeros(master.shape(), master.dtype(), master.device());
  }
}

bool AdamW::decays(const ParamInfo& p) const {
  switch (p.kind) {
    case ParamKind::weight: return true;
    case ParamKind::norm_or_bias: return config_.decay_norms_and_biases;
    case ParamKind::embedding: return config_.decay_embeddings;
    case ParamKind::buffer: return false;
  }
  return true;
}

Tensor AdamW::view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const {
  const ParamInfo& p = store_->info(id);
  return buffers[static_cast<int>(p.group)].rows(p.offset, p.offset + p.numel()).view(p.shape);
}

void AdamW::step(double lr, int64_t step) {
  for (size_t i = 0; i < store_->infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const ParamInfo& p = store_->info(id);
    if (p.kind == ParamKind::buffer) continue;
    ops::AdamWParams h;
    h.lr = static_cast<float>(lr);
    h.beta1 = static_cast<float>(config_.beta1);
    h.beta2 = static_cast<float>(config_.beta2);
    h.eps = static_cast<float>(config_.eps);
    h.weight_decay = decays(p) ? static_cast<float>(config_.weight_decay) : 0.0f;
    h.step = step;
    Tensor master = store_->master(id), m = moment1(id), v = moment2(id);
    ops::adamw_step(master, store_->grad(id), m, v, h);
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

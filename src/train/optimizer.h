// AdamW with decoupled weight decay over the flat parameter buffers (fp32 master weights on
// the GPU), with global-norm gradient clipping.
#pragma once

#include <vector>

#include "src/config/config.h"
#include "src/nn/param_store.h"

namespace moe {

// Whether a parameter gets weight decay under the config (by its kind; buffers never do).
bool adamw_decays(const ParamInfo& p, const OptimConfig& config);

// The one AdamW update of both optimizers (AdamW here, DistributedOptimizer on a ZeRO shard):
// the op's hyper-parameters at a step (the scheduled lr, betas, eps, the weight decay of each
// parameter's kind) applied by one ops::adamw_fused launch, which computes the bias corrections
// from the 1-based step, over a device table of the range's maximal runs of one setting (decay,
// no decay, or copy only: buffers and gaps). Parameters may straddle the range's ends: each part
// inside keeps its parameter's setting.
class AdamWUpdate {
 public:
  AdamWUpdate() = default;
  // Updates flat elements `own` of group g (registration order = offset order within a group).
  AdamWUpdate(const ParamStore& store, const OptimConfig& config, ParamGroup g, FlatRange own);
  // master, m, v, grads: flat elements `own` (own.begin at row 0);
  // grad_scale: the clip scale, f32[1] on the device (undefined = 1); params: the compute copy of
  // `own` (undefined = none), written in the same pass (ParamStore::compute_copy_of_master).
  void apply(const Tensor& master, const Tensor& grads, const Tensor& m, const Tensor& v, double lr, int64_t step,
             const Tensor& grad_scale = {}, Tensor params = {}) const;
  // The runs as (begin, end, kind) rows relative to own.begin (tests).
  const Tensor& runs() const { return runs_; }

 private:
  OptimConfig config_;
  FlatRange own_;
  Tensor runs_;  // i64[R,3] on the store's device: kernels::AdamWRun rows covering own
};

class AdamW {
 public:
  AdamW(ParamStore& store, const OptimConfig& config);
  // Whether this parameter gets weight decay under the config.
  bool decays(const ParamInfo& p) const;
  // One update at learning rate lr; `step` is 1-based. Refreshes the compute copy in the same pass.
  void step(double lr, int64_t step);

  Tensor& moment1(ParamGroup g) { return m_[static_cast<int>(g)]; }
  Tensor& moment2(ParamGroup g) { return v_[static_cast<int>(g)]; }
  Tensor moment1(ParamId id) const { return view(m_, id); }
  Tensor moment2(ParamId id) const { return view(v_, id); }

 private:
  Tensor view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const;

  ParamStore* store_;
  OptimConfig config_;
  AdamWUpdate update_[k_num_param_groups];
  Tensor m_[k_num_param_groups], v_[k_num_param_groups];
};

// The global L2 norm of all gradients (both groups); when max_norm > 0 and the norm exceeds
// it, scales every gradient by max_norm / norm. Returns the norm before clipping.
double clip_grad_norm(ParamStore& store, double max_norm);

}  // namespace moe

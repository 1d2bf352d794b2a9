// AdamW with decoupled weight decay over the flat parameter buffers (fp32 master weights on
// the GPU), with global-norm gradient clipping.
#pragma once

#include "src/config/config.h"
#include "src/nn/param_store.h"

namespace moe {

class AdamW {
 public:
  AdamW(ParamStore& store, const OptimConfig& config);
  // Whether this parameter gets weight decay under the config.
  bool decays(const ParamInfo& p) const;
  // One update at learning rate lr; `step` is 1-based. Refreshes the compute copy.
  void step(double lr, int64_t step);

  Tensor& moment1(ParamGroup g) { return m_[static_cast<int>(g)]; }
  Tensor& moment2(ParamGroup g) { return v_[static_cast<int>(g)]; }
  Tensor moment1(ParamId id) const { return view(m_, id); }
  Tensor moment2(ParamId id) const { return view(v_, id); }

 private:
  Tensor view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const;

  ParamStore* store_;
  OptimConfig config_;
  Tensor m_[k_num_param_groups], v_[k_num_param_groups];
};

// The global L2 norm of all gradients (both groups); when max_norm > 0 and the norm exceeds
// it, scales every gradient by max_norm / norm. Returns the norm before clipping.
double clip_grad_norm(ParamStore& store, double max_norm);

}  // namespace moe

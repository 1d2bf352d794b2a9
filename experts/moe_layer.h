// The MoE feed-forward layer: router -> dispatch (sort by expert) -> experts -> combine,
// plus the Switch load-balancing loss and the per-expert load for the metrics.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "experts/expert_group.h"
#include "parallel/local_dispatcher.h"
#include "routing/router.h"

namespace moe {

struct MoeLayerConfig {
  int64_t d_model = 0, num_experts = 0, top_k = 1, d_expert = 0;
  bool renormalize = true;
  ops::Activation activation = ops::Activation::swiglu;
  double aux_loss_coef = 0.0;
  double init_std = 0.02, out_init_std = 0.02;
};

// What one forward of one MoE layer reports.
struct MoeLayerStats {
  std::vector<int64_t> tokens_per_expert;  // routed slots per expert
  double aux_loss = 0;                     // alpha * E * sum f_i P_i (already scaled by alpha)
};

struct MoeLayerSaved {
  RouterSaved router;
  DispatchSaved dispatch;
  ExpertGroupSaved experts;
  Tensor y_sorted;
  Tensor aux_expert_grad;  // d aux / d probs per expert
  MoeLayerStats stats;
};

class MoeLayer {
 public:
  MoeLayer(ParamStore& store, const std::string& prefix, const MoeLayerConfig& config);
  // x[T,d] -> y[T,d]; stats in saved.stats
  Tensor forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved) const;
  // dy[T,d] -> dx[T,d]. aux_scale multiplies the auxiliary loss's gradient (the same factor
  // the trainer applies to the language-model loss of this micro-batch).
  Tensor backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale) const;
  const MoeLayerConfig& config() const { return config_; }

 private:
  MoeLayerConfig config_;
  std::unique_ptr<Router> router_;
  LocalDispatcher dispatcher_;
  ExpertGroup experts_;
};

}  // namespace moe

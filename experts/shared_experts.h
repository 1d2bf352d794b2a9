// Shared (always-active) experts of an MoE layer (DeepSeekMoE, Qwen2-MoE): K_s experts of
// width f computed for every token. They are stored as one FFN of width K_s*f, which equals
// the sum of the K_s expert FFNs; optionally gated per token by sigmoid(x . w_gate) (Qwen2-MoE).
// Under tensor parallelism the concatenated FFN splits like a dense FFN (w_up column-, w_down
// row-parallel, one all-reduce each way); the gate [d, 1] is replicated. Sequence parallelism:
// x, y and dx are this rank's tokens, the FFN's input all-gathered and its output reduce-scattered
// (the gate then sees this rank's tokens only: its gradient is a partial sum over the group).
#pragma once

#include <string>

#include "src/nn/dense_ffn.h"

namespace moe {

struct SharedExpertsSaved {
  FfnSaved ffn;
  Tensor ffn_out, gate_logit;
};

class SharedExperts {
 public:
  SharedExperts(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t num_experts, int64_t d_expert,
                ops::Activation act, bool gated, double init_std, double out_init_std, TpGroup tp = {});
  // x[T,d] -> y[T,d]
  Tensor forward(const Tensor& x, SharedExpertsSaved& saved) const;
  // dy[T,d] -> adds into dx[T,d]; accumulates parameter gradients
  void backward(const SharedExpertsSaved& saved, const Tensor& dy, Tensor& dx) const;

 private:
  ParamStore* store_;
  ops::Activation act_;
  TpGroup tp_;
  ParamId w_up_, w_down_, gate_ = -1;
};

}  // namespace moe

// The dense feed-forward block: x[T,d] -> up (gate|up for GLU) -> activation -> down -> y[T,d].
#pragma once

#include <string>

#include "src/nn/param_store.h"
#include "src/nn/tensor_parallel.h"
#include "src/ops/ops.h"

namespace moe {

// One FFN's weights and math, shared by the dense FFN and by each expert of an MoE layer:
// w_up[d, f] (or [d, 2f] = [gate | up] for GLU activations), w_down[f, d].
struct FfnSaved {
  Tensor x, h;  // input, pre-activation (backward makes the post-activation again from h)
};
// b_up[f or 2f] (undefined = none): the up projection's bias, added before the activation.
Tensor ffn_forward(const Tensor& x, const Tensor& w_up, const Tensor& w_down, ops::Activation act, FfnSaved& saved,
                   const Tensor& b_up = Tensor());
// Accumulates dw_up, dw_down (and db_up when defined); writes dx (or adds into it when accumulate_dx).
void ffn_backward(const FfnSaved& saved, const Tensor& w_up, const Tensor& w_down, ops::Activation act,
                  const Tensor& dy, Tensor& dw_up, Tensor& dw_down, Tensor& dx, bool accumulate_dx = false,
                  Tensor db_up = Tensor());
inline int64_t ffn_up_width(ops::Activation act, int64_t d_ff) { return ops::is_gated(act) ? 2 * d_ff : d_ff; }

// Tensor parallelism (Megatron): rank r holds hidden units [r*f/tp, (r+1)*f/tp): w_up a column
// shard (a GLU rank keeps its gate and up columns, stored [gate | up] as ffn_forward expects),
// w_down a row shard; one all-reduce of y forward and of dx backward. With biases (model.ffn_bias)
// b_up is sharded with w_up's columns and b_down, replicated, is added once after the all-reduce.
// Sequence parallelism: x and y are this rank's tokens [T/tp, d], all-gathered before w_up
// (FfnSaved::x keeps the local part) and reduce-scattered after w_down; backward the conjugates.
class DenseFfn {
 public:
  // Requires d_ff divisible by tp.size().
  DenseFfn(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t d_ff, ops::Activation act,
           double init_std, double out_init_std, TpGroup tp = {}, bool bias = false);
  Tensor forward(const Tensor& x, FfnSaved& saved) const;
  Tensor backward(const FfnSaved& saved, const Tensor& dy) const;

 private:
  ParamStore* store_;
  ops::Activation act_;
  TpGroup tp_;
  ParamId w_up_, w_down_;
  ParamId b_up_ = -1, b_down_ = -1;
};

}  // namespace moe

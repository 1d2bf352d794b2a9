// The "grouped" Experts implementation: each projection is one grouped GEMM over all local
// experts, reading the per-expert row offsets where they live (on the GPU: no host sync).
#pragma once

#include <string>

#include "experts/experts.h"

namespace moe {

// Forward: h = x @ w_up[e], a = act(h), y = a @ w_down[e] (two grouped GEMMs around one
// activation); backward: two grouped GEMMs for the input gradients and two for the weights.
// Numerically the loop's math: on the CPU each expert's GEMM is the same reference GEMM.
class GroupedExperts final : public Experts {
 public:
  GroupedExperts(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec);
  const char* name() const override { return "grouped"; }
  int64_t num_local_experts() const override { return num_local_; }
  // Uses ExpertRows::device_offsets (uploads host counts; never reads device offsets back).
  Tensor forward(const Tensor& x_sorted, const ExpertRows& rows, ExpertsSaved& saved) const override;
  Tensor backward(const ExpertsSaved& saved, const Tensor& dy_sorted) const override;
  // The weights enter with the recomputed activation (ops::activation_backward_weighted): the
  // down projection's input gradient g = dy @ w_down^T gives <g, a> = <dy, y> for the weights,
  // and w * a feeds w_down's gradient.
  bool applies_row_weights() const override { return true; }
  Tensor backward_weighted(const ExpertsSaved& saved, Tensor dy_sorted, const Tensor& row_weights,
                           Tensor& drow_weights) const override;

 private:
  // The input rows backward reads (ExpertsSaved::input, or made again by remake_input), checked
  // against the saved state.
  Tensor input_of(const ExpertsSaved& saved) const;
  // dh -> dx_sorted and w_up's gradient (both backwards end alike).
  Tensor up_backward(const ExpertsSaved& saved, const Tensor& dh) const;

  struct State : ExpertsState {
    Tensor offsets;  // i32[L+1] on the rows' device
    Tensor h;  // pre-activation [N, f or 2f] (backward recomputes the activation from h; the input is ExpertsSaved::input)
  };

  ParamStore* store_;
  int64_t num_local_, d_expert_;
  ops::Activation act_;
  ExpertWeights w_;
};

}  // namespace moe

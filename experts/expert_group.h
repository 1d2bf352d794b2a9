// E experts of one activation and width, run over tokens sorted by expert: w_up[E, d, f or 2f],
// w_down[E, f, d], expert-parallel parameters (ParamGroup::expert).
#pragma once

#include <string>
#include <vector>

#include "src/nn/dense_ffn.h"

namespace moe {

struct ExpertGroupSaved {
  std::vector<FfnSaved> per_expert;
  std::vector<int64_t> counts;
};

class ExpertGroup {
 public:
  // This rank runs experts [first_expert, first_expert + num_local) of num_experts (expert
  // parallelism splits them over the EP group; without it num_local = num_experts).
  ExpertGroup(ParamStore& store, const std::string& prefix, int64_t num_experts, int64_t first_expert,
              int64_t num_local, int64_t d_model, int64_t d_expert, ops::Activation act, double init_std,
              double out_init_std);
  // x_sorted[N,d] with counts[E] rows per expert (in order) -> y_sorted[N,d]
  Tensor forward(const Tensor& x_sorted, const std::vector<int64_t>& counts, ExpertGroupSaved& saved) const;
  // dy_sorted[N,d] -> dx_sorted[N,d]; accumulates expert weight gradients
  Tensor backward(const ExpertGroupSaved& saved, const Tensor& dy_sorted) const;
  int64_t num_local_experts() const { return num_experts_; }

 private:
  Tensor expert_slice(ParamId id, int64_t e, bool grad) const;

  ParamStore* store_;
  int64_t num_experts_;  // local experts
  ops::Activation act_;
  ParamId w_up_, w_down_;
};

}  // namespace moe

// The "loop" Experts implementation, the reference the others are tested against: one FFN GEMM
// chain per local expert over its contiguous block of the sorted rows.
#pragma once

#include <string>
#include <vector>

#include "experts/experts.h"
#include "src/nn/dense_ffn.h"

namespace moe {

class LoopExperts final : public Experts {
 public:
  LoopExperts(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec);
  const char* name() const override { return "loop"; }
  int64_t num_local_experts() const override { return num_local_; }
  // Reads host counts (ExpertRows::host_counts: a device sync when only device offsets are given).
  Tensor forward(const Tensor& x_sorted, const ExpertRows& rows, ExpertsSaved& saved) const override;
  Tensor backward(const ExpertsSaved& saved, const Tensor& dy_sorted) const override;

 private:
  struct State : ExpertsState {
    std::vector<int64_t> counts;
    std::vector<FfnSaved> per_expert;
  };
  Tensor expert_slice(ParamId id, int64_t e, bool grad) const;

  ParamStore* store_;
  int64_t num_local_;
  ops::Activation act_;
  ExpertWeights w_;
};

}  // namespace moe

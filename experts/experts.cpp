// The parts of the Experts contract every implementation shares: the two forms of the per-expert
// row split and the canonical expert weights.
#include "experts/experts.h"

#include "src/nn/dense_ffn.h"

namespace moe {

ExpertRows ExpertRows::from_counts(std::vector<int64_t> counts) {
  ExpertRows rows;
  rows.counts = std::move(counts);
  return rows;
}

ExpertRows ExpertRows::from_offsets(Tensor offsets) {
  MOE_CHECK(offsets.defined() && offsets.ndim() == 1 && offsets.dtype() == DType::i32 && offsets.numel() >= 1,
            "expert rows: offsets must be i32[L+1]");
  ExpertRows rows;
  rows.offsets = std::move(offsets);
  return rows;
}

int64_t ExpertRows::num_experts() const {
  if (!counts.empty() || !offsets.defined()) return static_cast<int64_t>(counts.size());
  return offsets.numel() - 1;
}

std::vector<int64_t> ExpertRows::host_counts() const {
  if (!counts.empty() || !offsets.defined()) return counts;
  return ops::counts_from_offsets(offsets, "expert rows");
}

Tensor ExpertRows::device_offsets(Device device) const {
  if (offsets.defined()) {
    MOE_CHECK(offsets.device() == device, "expert rows: offsets live on ", offsets.device().str(), ", not ",
              device.str());
    return offsets;
  }
  std::vector<int32_t> ends{0};
  for (int64_t c : counts) {
    MOE_CHECK(c >= 0, "expert rows: negative count ", c);
    ends.push_back(static_cast<int32_t>(ends.back() + c));
  }
  Tensor host = Tensor::from_vector(ends, {static_cast<int64_t>(ends.size())}, DType::i32);
  return device.is_cuda() ? host.to(device) : host;
}

ExpertWeights add_expert_weights(ParamStore& store, const std::string& prefix, const ExpertsSpec& s) {
  MOE_CHECK(s.num_local >= 1 && s.first_expert >= 0 && s.first_expert + s.num_local <= s.num_experts, "experts '",
            prefix, "': local experts [", s.first_expert, ", ", s.first_expert + s.num_local, ") are not within the ",
            s.num_experts, " experts");
  ExpertWeights w;
  w.w_up = store.add_row_shard(prefix + ".w_up", {s.num_experts, s.d_model, ffn_up_width(s.activation, s.d_expert)},
                               s.first_expert, s.num_local, SplitOver::ep, ParamGroup::expert, ParamKind::weight,
                               ParamInit::normal, s.init_std);
  w.w_down = store.add_row_shard(prefix + ".w_down", {s.num_experts, s.d_expert, s.d_model}, s.first_expert,
                                 s.num_local, SplitOver::ep, ParamGroup::expert, ParamKind::weight, ParamInit::normal,
                                 s.out_init_std);
  return w;
}

Tensor Experts::backward_weighted(const ExpertsSaved&, Tensor, const Tensor&, Tensor&) const {
  MOE_CHECK(false, "experts '", name(), "' do not apply the combine's weights in their backward");
  return {};
}

}  // namespace moe

// Switch auxiliary loss value and gradient; P_i comes from a column sum on the device, the
// rest is E numbers on the host.
#include "routing/switch_aux_loss.h"

#include "src/ops/ops.h"

namespace moe {

AuxLossResult switch_aux_loss(const Tensor& probs, const std::vector<int64_t>& counts, int64_t top_k, double alpha) {
  int64_t tokens = probs.size(0), experts = probs.size(1);
  MOE_CHECK(static_cast<int64_t>(counts.size()) == experts, "aux loss: ", counts.size(), " counts for ", experts,
            " experts");
  Tensor prob_sums = Tensor::empty({experts}, probs.dtype(), probs.device());
  ops::column_sum(probs, prob_sums);
  std::vector<double> p = prob_sums.to_vector<double>();
  AuxLossResult result;
  std::vector<double> grad(static_cast<size_t>(experts), 0.0);
  double denom = static_cast<double>(std::max<int64_t>(tokens, 1));
  for (int64_t i = 0; i < experts; ++i) {
    double f = static_cast<double>(counts[i]) / (denom * static_cast<double>(top_k));
    double p_mean = p[i] / denom;
    result.value += alpha * static_cast<double>(experts) * f * p_mean;
    grad[i] = alpha * static_cast<double>(experts) * f / denom;
  }
  Tensor host = probs.dtype() == DType::f64 ? Tensor::from_vector(grad, {experts}, DType::f64)
                                            : Tensor::from_vector(std::vector<float>(grad.begin(), grad.end()),
                                                                  {experts}, DType::f32);
  result.expert_grad = host.to(probs.device());
  return result;
}

}  // namespace moe

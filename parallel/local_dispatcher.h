// The dispatch phase on one rank (no expert parallelism): tokens are permuted into
// expert-sorted order (dropless), and the experts' outputs are un-permuted, weighted and summed.
#pragma once

#include <vector>

#include "src/tensor/tensor.h"

namespace moe {

struct DispatchSaved {
  Tensor sorted_tokens;         // i32[N]: the token of each expert-sorted row (N = sum of counts)
  Tensor slot_pos;              // i32[T*k]: the sorted row of slot t*k+s, -1 if it has none
  std::vector<int64_t> counts;  // rows per expert (host)
  int64_t num_tokens = 0;
};

class LocalDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  // x[T,d], ids i32[T,k] (-1 = no expert) -> x_sorted[N,d] grouped by expert (counts in saved)
  Tensor dispatch(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const;
  // dx_sorted[N,d] -> dx[T,d] (sum over each token's copies)
  Tensor dispatch_backward(const DispatchSaved& saved, const Tensor& dx_sorted) const;
  // y_sorted[N,d], weights[T,k] -> out[T,d] = sum over routed slots of weights[t,s] * y(t,s)
  Tensor combine(const DispatchSaved& saved, const Tensor& y_sorted, const Tensor& weights) const;
  // dout[T,d] -> dy_sorted[N,d], dweights[T,k]
  void combine_backward(const DispatchSaved& saved, const Tensor& y_sorted, const Tensor& weights,
                        const Tensor& dout, Tensor& dy_sorted, Tensor& dweights) const;

 private:
  int64_t num_experts_;
};

}  // namespace moe

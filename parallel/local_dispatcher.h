// The dispatch phase on one rank (no expert parallelism): tokens are permuted into
// expert-sorted order (dropless), and the experts' outputs are un-permuted, weighted and summed.
#pragma once

#include <vector>

#include "parallel/dispatcher.h"
#include "src/tensor/tensor.h"

namespace moe {

// Every expert is local: x_local is the expert-sorted copy of x (a row per slot), its split over
// the experts the device offsets in saved (no host wait).
class LocalDispatcher : public Dispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  // x[T,d], ids i32[T,k] (-1 = no expert) -> x_sorted[N,d] grouped by expert (counts in saved)
  Tensor dispatch(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const override;
  // dx_sorted[N,d] -> dx[T,d] (sum over each token's copies)
  Tensor dispatch_backward(const DispatchSaved& saved, const Tensor& dx_sorted, const Tensor& add) const override;
  // y_sorted[N,d], weights[T,k] -> out[T,d] = sum over routed slots of weights[t,s] * y(t,s)
  Tensor combine(DispatchSaved& saved, const Tensor& y_sorted, const Tensor& weights) const override;
  // dout[T,d] -> dy_sorted[N,d], dweights[T,k]
  void combine_backward(const DispatchSaved& saved, const Tensor& y_sorted, const Tensor& weights, const Tensor& dout,
                        Tensor& dy_sorted, Tensor& dweights) const override;

  // The rows are x's rows in sorted order: redispatch is dispatch's row move again, from the saved
  // slot rows (moe_scatter_rows).
  bool rows_are_local() const override { return true; }
  Tensor redispatch(const DispatchSaved& saved, const Tensor& x) const override;
  void combine_backward_unweighted(const DispatchSaved& saved, const Tensor& weights, const Tensor& dout,
                                   Tensor& dy_sorted, Tensor& row_weights) const override;
  Tensor slot_weight_grads(const DispatchSaved& saved, const Tensor& drow_weights) const override;

  int64_t num_experts() const override { return num_experts_; }
  int64_t num_local_experts() const override { return num_experts_; }
  int64_t first_expert() const override { return 0; }

 private:
  int64_t num_experts_;
};

}  // namespace moe

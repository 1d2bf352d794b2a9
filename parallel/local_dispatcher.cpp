// Local dispatcher over the permutation ops: sort by expert, gather rows, scatter-add back,
// and the weighted combine.
#include "parallel/local_dispatcher.h"

#include "src/ops/ops.h"

namespace moe {

Tensor LocalDispatcher::dispatch(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const {
  int64_t slots = ids.numel();
  saved.num_tokens = x.size(0);
  saved.sorted_tokens = Tensor::empty({slots}, DType::i32, x.device());
  saved.slot_pos = Tensor::empty({slots}, DType::i32, x.device());
  saved.counts = ops::moe_sort_by_expert(ids, num_experts_, saved.sorted_tokens, saved.slot_pos);
  int64_t rows = 0;
  for (int64_t c : saved.counts) rows += c;  // slots with id -1 (dropped) get no row
  saved.routed_counts = saved.counts;
  saved.sorted_tokens = saved.sorted_tokens.rows(0, rows);
  Tensor x_sorted = Tensor::empty({rows, x.size(1)}, x.dtype(), x.device());
  // An empty gather is skipped: the ops' checks read a zero-row tensor as having no columns.
  if (rows > 0) ops::gather_rows(x, saved.sorted_tokens, x_sorted);
  return x_sorted;
}

Tensor LocalDispatcher::dispatch_backward(const DispatchSaved& saved, const Tensor& dx_sorted) const {
  Tensor dx = Tensor::zeros({saved.num_tokens, dx_sorted.size(1)}, dx_sorted.dtype(), dx_sorted.device());
  if (dx_sorted.size(0) > 0) ops::scatter_add_rows(dx_sorted, saved.sorted_tokens, dx);
  return dx;
}

Tensor LocalDispatcher::combine(DispatchSaved& saved, const Tensor& y_sorted, const Tensor& weights) const {
  Tensor out = Tensor::empty({saved.num_tokens, y_sorted.size(1)}, y_sorted.dtype(), y_sorted.device());
  ops::moe_combine_forward(y_sorted, saved.slot_pos, weights, out);
  return out;
}

void LocalDispatcher::combine_backward(const DispatchSaved& saved, const Tensor& y_sorted, const Tensor& weights,
                                       const Tensor& dout, Tensor& dy_sorted, Tensor& dweights) const {
  dy_sorted = Tensor::empty(y_sorted.shape(), y_sorted.dtype(), y_sorted.device());
  dweights = Tensor::empty(weights.shape(), weights.dtype(), weights.device());
  ops::moe_combine_backward(y_sorted, saved.slot_pos, weights, dout, dy_sorted, dweights);
}

}  // namespace moe

// What every dispatcher's saved state shares: the host copy of the load statistics on demand.
#include "parallel/dispatcher.h"

#include "src/ops/ops.h"

namespace moe {

const std::vector<int64_t>& DispatchSaved::host_routed_counts() {
  if (routed_counts.empty() && offsets.defined()) routed_counts = ops::counts_from_offsets(offsets);
  return routed_counts;
}

Tensor Dispatcher::take_pending(const DispatchSaved& saved) {
  MOE_CHECK(saved.pending_rows.defined(), "Dispatcher: a *_finish without its *_start");
  if (saved.pending) saved.pending->wait();
  saved.pending.reset();
  Tensor rows = saved.pending_rows;
  saved.pending_rows = Tensor();
  return rows;
}

Tensor Dispatcher::combine_rows(const DispatchSaved& saved, const Tensor& rows, const Tensor& weights) {
  const std::vector<Tensor>& add = saved.combine_addends;
  MOE_CHECK(add.size() <= 2, "Dispatcher: the combine adds at most 2 tensors, got ", add.size());
  Tensor out = Tensor::empty({saved.num_tokens, rows.size(1)}, rows.dtype(), rows.device());
  ops::moe_combine_forward(rows, saved.slot_pos, weights, out, add.size() > 0 ? add[0] : Tensor(),
                           add.size() > 1 ? add[1] : Tensor());
  return out;
}

namespace {

void refuse_local_rows(const char* what) {
  MOE_CHECK(false, "this dispatcher's expert rows come from an exchange between ranks: it cannot ", what,
            " (rows_are_local() is false)");
}

}  // namespace

Tensor Dispatcher::redispatch(const DispatchSaved&, const Tensor&) const {
  refuse_local_rows("make the experts' input rows again");
  return {};
}

void Dispatcher::combine_backward_unweighted(const DispatchSaved&, const Tensor&, const Tensor&, Tensor&,
                                             Tensor&) const {
  refuse_local_rows("leave the combine's weights to the experts");
}

Tensor Dispatcher::slot_weight_grads(const DispatchSaved&, const Tensor&) const {
  refuse_local_rows("leave the combine's weights to the experts");
  return {};
}

}  // namespace moe

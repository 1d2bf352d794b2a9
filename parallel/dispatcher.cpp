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

Tensor Dispatcher::redispatch(const DispatchSaved& saved, const Tensor& x) const {
  (void)saved;
  (void)x;
  MOE_CHECK(false, "this dispatcher cannot make the experts' input rows again (can_redispatch() is false)");
  return {};
}

}  // namespace moe

// Expert-parallel dispatch: each rank of the EP group owns a contiguous block of experts;
// routed tokens travel to their experts' owners by all-to-all and the outputs travel back.
#pragma once

#include <cstdint>

#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "src/tensor/pinned_buffer.h"

namespace moe {

// Rank r of the EP group owns experts [r*E/ep, (r+1)*E/ep). One dispatch:
//   sort this rank's slots by global expert (rows for rank r are then contiguous)
//   -> exchange per-expert counts on the device, read them (and this rank's own) back in one
//      copy into a page-locked buffer kept by the dispatcher (the one host synchronisation)
//   -> all-to-all-v the rows -> reorder the received [src0: e0..eL | src1: ...] rows into
//   local-expert-major [e0: src0, src1... | e1: ...] so the experts run on contiguous blocks.
// Within an expert, rows are ordered by (source rank, token, slot): the order the local
// dispatcher gives the concatenation of the EP group's tokens in rank order.
// combine reverses it (inverse reorder, all-to-all back, weighted sum into [T,d]); each
// backward moves gradients along the same routes. The communicator's device is the tensors'
// device (MPI: CPU, NCCL: CUDA); it must outlive the dispatcher.
class AllToAllDispatcher : public Dispatcher {
 public:
  AllToAllDispatcher(int64_t num_experts, Communicator& ep_group);

  // x[T,d], ids i32[T,k] global expert ids (-1 = no expert) -> x_local[N_local,d], saved.counts
  // rows per local expert. Collective over the EP group.
  Tensor dispatch(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const override;
  // dx_local[N_local,d] -> dx[T,d]. Collective.
  Tensor dispatch_backward(const DispatchSaved& saved, const Tensor& dx_local, const Tensor& add) const override;
  // y_local[N_local,d], weights[T,k] -> out[T,d]; keeps the returned rows in saved.combine_rows.
  // Collective.
  Tensor combine(DispatchSaved& saved, const Tensor& y_local, const Tensor& weights) const override;
  // dout[T,d] -> dy_local[N_local,d], dweights[T,k] (from saved.combine_rows; y_local is only
  // checked). Collective.
  void combine_backward(const DispatchSaved& saved, const Tensor& y_local, const Tensor& weights, const Tensor& dout,
                        Tensor& dy_local, Tensor& dweights) const override;

  // The split phases (Dispatcher): start returns once the rows' all-to-all is started
  // (Communicator::all_to_all_v_start); the counts' exchange and read back happen in
  // dispatch_start.
  void dispatch_start(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const override;
  Tensor dispatch_finish(DispatchSaved& saved) const override;
  void combine_start(DispatchSaved& saved, const Tensor& y_local, const Tensor& weights) const override;
  Tensor combine_finish(DispatchSaved& saved, const Tensor& weights) const override;
  void combine_backward_start(const DispatchSaved& saved, const Tensor& y_local, const Tensor& weights,
                              const Tensor& dout, Tensor& dweights) const override;
  Tensor combine_backward_finish(const DispatchSaved& saved) const override;

  int64_t num_experts() const override { return num_experts_; }
  int64_t num_local_experts() const override { return num_local_; }
  int64_t first_expert() const override { return first_expert_; }
  Communicator& group() const { return *group_; }

 private:
  // An all-to-all in flight and the buffer it receives into.
  struct Exchange {
    std::shared_ptr<PendingCollective> pending;
    Tensor rows;
  };
  // Sorted rows on this rank [N,d] -> local-expert-major rows on the owners [N_local,d]; start
  // sends, finish waits and regroups by local expert.
  Tensor to_experts(const DispatchSaved& saved, const Tensor& sorted_rows, const char* call) const;
  Exchange to_experts_start(const DispatchSaved& saved, const Tensor& sorted_rows, const char* call) const;
  Tensor to_experts_finish(const DispatchSaved& saved, Exchange& exchange) const;
  // Local-expert-major rows [N_local,d] -> this rank's sorted rows [N,d]; start regroups by
  // source rank and sends, finish waits.
  Tensor from_experts(const DispatchSaved& saved, const Tensor& local_rows, const char* call) const;
  Exchange from_experts_start(const DispatchSaved& saved, const Tensor& local_rows, const char* call) const;
  Tensor from_experts_finish(Exchange& exchange) const;

  Communicator* group_;
  int64_t num_experts_, num_local_, first_expert_;
  // The count exchange's read back, reused by every dispatch of this layer.
  mutable PinnedBuffer counts_host_;
};

}  // namespace moe

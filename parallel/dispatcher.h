// The dispatch phase as one interface: tokens go to the experts that own them (a permutation
// on one rank, an all-to-all across the EP group) and the experts' outputs come back weighted.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "src/tensor/tensor.h"

namespace moe {

// What the phases of one micro-batch keep for the later phases and their backward (owned by
// the caller). "Sorted" rows are this rank's routed slots in global expert order; "local" rows
// are what this rank's experts process, grouped by local expert (for the local dispatcher the
// two are the same rows).
struct DispatchSaved {
  // Input to dispatch: at most this many slots are routed (a capacity's bound; -1 = every slot).
  // A dispatcher that keeps its counts on the device sizes its rows by it.
  int64_t max_rows = -1;
  // Input to combine: up to two [T,d] tensors it adds to its output in the same pass (the block's
  // residual, the shared experts' output), set before the combine starts; empty = none.
  std::vector<Tensor> combine_addends;
  Tensor sorted_tokens;         // i32[N]: the token of each expert-sorted row (N = sum of routed_counts)
  Tensor slot_pos;              // i32[T*k]: the sorted row of slot t*k+s, -1 if it has none
  // Rows per local expert, the experts' input: on the host (counts) or on the device (offsets
  // i32[L+1], rows [offsets[e], offsets[e+1]) for expert e; then the experts' input has a row for
  // every slot and those past offsets[L] are padding). rows() gives whichever is set.
  std::vector<int64_t> counts;
  Tensor offsets;
  int64_t num_tokens = 0;
  // This rank's routed (kept) slots per global expert [E] (host): the load statistics. Equal to
  // counts for the local dispatcher; with expert parallelism counts are what this rank's experts
  // receive from the whole EP group instead. Empty until host_routed_counts() asks when the
  // dispatcher keeps its counts on the device.
  std::vector<int64_t> routed_counts;
  // routed_counts, copied from the device offsets on first use (a wait on the device).
  const std::vector<int64_t>& host_routed_counts();

  // Expert parallelism only (empty or undefined for the local dispatcher).
  std::vector<int64_t> send_counts;         // [ep] sorted rows sent to each EP rank
  std::vector<int64_t> recv_counts;         // [ep] rows received from each EP rank
  std::vector<int64_t> recv_expert_counts;  // [ep * L]: rows from EP rank q for local expert j at q*L + j
  // The received rows are source-major [q0: e0..eL-1 | q1: ...]; the experts read them local-
  // expert-major [e0: q0, q1... | e1: ...]. local_rows[i] = received row of local row i;
  // received_rows[j] = local row of received row j (the inverse). Both i32[N_local].
  Tensor local_rows, received_rows;
  // [N, d]: the experts' outputs back on this rank in sorted order, as combine read them
  // (combine_backward needs them for dweights).
  Tensor combine_rows;

  // Between a *_start and its *_finish: the exchange in flight (null when it completed at once)
  // and the tensor the finish works on (its received rows, or the phase's whole result).
  // (mutable: the backward's split phases take the saved state as const.)
  mutable std::shared_ptr<PendingCollective> pending;
  mutable Tensor pending_rows;
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;

  // x[T,d], ids i32[T,k] global expert ids (-1 = no expert) -> x_local[N_local,d] grouped by
  // local expert (saved.counts rows each, in local expert order)
  virtual Tensor dispatch(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const = 0;
  // dx_local[N_local,d] -> dx[T,d] (sum over each token's copies) + add[T,d] when defined (the
  // shared experts' input gradient; the local dispatcher adds it in the same pass).
  virtual Tensor dispatch_backward(const DispatchSaved& saved, const Tensor& dx_local, const Tensor& add) const = 0;
  // y_local[N_local,d], weights[T,k] -> out[T,d] = sum over routed slots of weights[t,s] * y(t,s),
  // plus saved.combine_addends. Records in saved what combine_backward needs.
  virtual Tensor combine(DispatchSaved& saved, const Tensor& y_local, const Tensor& weights) const = 0;
  // dout[T,d] -> dy_local[N_local,d], dweights[T,k] (0 for slots without an expert)
  virtual void combine_backward(const DispatchSaved& saved, const Tensor& y_local, const Tensor& weights,
                                const Tensor& dout, Tensor& dy_local, Tensor& dweights) const = 0;

  // The phases split around their exchange, so that independent compute (the shared experts)
  // runs while the rows travel: *_start does everything up to starting the exchange and
  // returns; *_finish waits for it and returns what the whole phase returns. Every start is
  // followed by its finish before another phase of the same saved starts. The base versions run
  // the whole phase in start (nothing overlaps). Same contracts as the phases above.
  virtual void dispatch_start(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const {
    saved.pending_rows = dispatch(x, ids, saved);
  }
  virtual Tensor dispatch_finish(DispatchSaved& saved) const { return take_pending(saved); }
  virtual void combine_start(DispatchSaved& saved, const Tensor& y_local, const Tensor& weights) const {
    saved.pending_rows = combine(saved, y_local, weights);
  }
  virtual Tensor combine_finish(DispatchSaved& saved, const Tensor& weights) const {
    (void)weights;
    return take_pending(saved);
  }
  // combine_backward split: start computes dweights and starts sending dy back to the experts;
  // finish returns dy_local.
  virtual void combine_backward_start(const DispatchSaved& saved, const Tensor& y_local, const Tensor& weights,
                                      const Tensor& dout, Tensor& dweights) const {
    combine_backward(saved, y_local, weights, dout, saved.pending_rows, dweights);
  }
  virtual Tensor combine_backward_finish(const DispatchSaved& saved) const { return take_pending(saved); }

  // Whether the experts' rows are this rank's expert-sorted rows, made without an exchange (one
  // rank). Then a backward may make them again instead of keeping them (redispatch: x[T,d], the
  // tensor dispatch was given -> the rows dispatch returned, the same values), and the combine's
  // weights may be applied in the experts' backward instead (Experts::backward_weighted), which
  // keeps no expert outputs: combine_backward_unweighted gives dout[T,d] to the rows unweighted
  // (dy_local[N,d]) with each row's slot weight (row_weights[N], accum; rows no slot uses: zero),
  // and slot_weight_grads turns the experts' row gradients drow_weights[N] into dweights[T,k].
  // A dispatcher whose rows travel between ranks refuses these (its rows_are_local() is false).
  virtual bool rows_are_local() const { return false; }
  virtual Tensor redispatch(const DispatchSaved& saved, const Tensor& x) const;
  virtual void combine_backward_unweighted(const DispatchSaved& saved, const Tensor& weights, const Tensor& dout,
                                           Tensor& dy_local, Tensor& row_weights) const;
  virtual Tensor slot_weight_grads(const DispatchSaved& saved, const Tensor& drow_weights) const;

  virtual int64_t num_experts() const = 0;        // E, over the whole EP group
  virtual int64_t num_local_experts() const = 0;  // the experts this rank runs
  virtual int64_t first_expert() const = 0;       // global id of local expert 0

 protected:
  // Waits for saved's exchange in flight (if any) and hands over saved.pending_rows.
  static Tensor take_pending(const DispatchSaved& saved);
  // The weighted combine of rows[N,d] (in sorted order) into a new out[T,d], with saved's addends.
  static Tensor combine_rows(const DispatchSaved& saved, const Tensor& rows, const Tensor& weights);
};

}  // namespace moe

// The Experts interface: a layer's routed experts on this rank, run over its tokens sorted by
// local expert. Implementations are registered in experts/experts_registry.cpp (moe.experts_impl).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "src/nn/param_store.h"
#include "src/util/check.h"
#include "src/ops/ops.h"

namespace moe {

// How the sorted rows split over the L local experts: rows [offsets[e], offsets[e+1]) of
// x_sorted go to local expert e, counts[e] = offsets[e+1] - offsets[e]. Rows past the last
// expert's (offsets[L] <= N) are padding: their outputs and input gradients are unspecified. Either form may be given,
// or both (then they describe the same split). An implementation asks for the form it needs:
// host_counts() copies device offsets to the host (a wait on the device), device_offsets()
// uploads host counts (no wait). A grouped GEMM that reads offsets on the device is therefore
// given `offsets` by a dispatcher that computed them there, and never syncs with the host.
struct ExpertRows {
  Tensor offsets;               // i32[L+1] (offsets[0] = 0, offsets[L] = N), on x_sorted's device
  std::vector<int64_t> counts;  // [L] on the host

  static ExpertRows from_counts(std::vector<int64_t> counts);
  static ExpertRows from_offsets(Tensor offsets);
  int64_t num_experts() const;  // L
  std::vector<int64_t> host_counts() const;
  Tensor device_offsets(Device device) const;
};

// What every implementation is built from: this rank runs local experts [first_expert,
// first_expert + num_local) of num_experts (expert parallelism splits them over the EP group;
// without it num_local = num_experts), each an FFN d_model -> d_expert -> d_model.
struct ExpertsSpec {
  int64_t num_experts = 0, first_expert = 0, num_local = 0;
  int64_t d_model = 0, d_expert = 0;
  ops::Activation activation = ops::Activation::swiglu;
  double init_std = 0.02, out_init_std = 0.02;
};

// The canonical expert weights every implementation registers (so checkpoints do not depend on
// the implementation): "<prefix>.w_up" [E, d, f or 2f] ([gate | up] for GLU activations) and
// "<prefix>.w_down" [E, f, d], row shards of this rank's local experts, ParamGroup::expert.
struct ExpertWeights {
  ParamId w_up = -1, w_down = -1;
};
ExpertWeights add_expert_weights(ParamStore& store, const std::string& prefix, const ExpertsSpec& spec);

// The state an implementation keeps from forward for backward; each derives its own.
struct ExpertsState {
  virtual ~ExpertsState() = default;
};

// What forward keeps for backward (owned by the caller, one per micro-batch). Copies share the
// state, as copies of a Tensor share its storage.
struct ExpertsSaved {
  ExpertRows rows;  // as forward was given them
  std::shared_ptr<ExpertsState> state;
  // x_sorted as forward was given it, for an implementation that reads it in backward (grouped;
  // undefined for the others). A caller that can rebuild the rows may drop it after forward to
  // free them, and then sets remake_input, which backward calls when it needs them (so that they
  // exist only from then on).
  Tensor input;
  std::function<Tensor()> remake_input;

  // The state as the implementation `impl` saved it; throws when it is missing or another's.
  template <typename State>
  const State& state_as(const char* impl) const {
    const auto* s = dynamic_cast<const State*>(state.get());
    MOE_CHECK(s != nullptr, "experts '", impl, "': backward was given no forward state of this implementation");
    return *s;
  }
};

class Experts {
 public:
  virtual ~Experts() = default;
  virtual const char* name() const = 0;  // its moe.experts_impl name
  virtual int64_t num_local_experts() const = 0;

  // x_sorted[N,d], rows over the local experts (L = num_local_experts(), summing to N)
  //   -> y_sorted[N,d], row i = the FFN of its expert applied to x_sorted row i
  virtual Tensor forward(const Tensor& x_sorted, const ExpertRows& rows, ExpertsSaved& saved) const = 0;
  // dy_sorted[N,d] -> dx_sorted[N,d]; accumulates into the expert weight gradients
  virtual Tensor backward(const ExpertsSaved& saved, const Tensor& dy_sorted) const = 0;
  // Whether backward_weighted is implemented.
  virtual bool applies_row_weights() const { return false; }
  // The backward with the combine's weights applied here, so that nobody keeps the expert outputs
  // for the weights' gradient: dy_sorted[N,d] the unweighted gradient of each row's output (its
  // token's output gradient), row_weights[N] (accum) each row's slot weight -> dx_sorted[N,d], the
  // weight gradients accumulated as by backward(saved, row_weights * dy_sorted), and
  // drow_weights[N] (accum, written) = <dy_sorted[i], y_sorted[i]>: each row weight's gradient.
  // dy_sorted is taken: it is released as soon as it is read for the last time.
  virtual Tensor backward_weighted(const ExpertsSaved& saved, Tensor dy_sorted, const Tensor& row_weights,
                                   Tensor& drow_weights) const;
};

}  // namespace moe

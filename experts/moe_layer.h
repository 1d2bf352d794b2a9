// The MoE feed-forward layer: router -> capacity (optional dropping) -> dispatch (sort by
// expert) -> experts -> combine, plus shared experts, the balancing losses and the routing statistics.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "experts/experts.h"
#include "experts/shared_experts.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "routing/balancing.h"
#include "routing/balancing_terms.h"
#include "routing/router.h"

namespace moe {

struct MoeLayerConfig {
  int64_t d_model = 0, num_experts = 0, d_expert = 0;
  ops::Activation activation = ops::Activation::swiglu;
  double capacity_factor = 0;  // token choice only; 0 = dropless
  ops::DropOrder drop_order = ops::DropOrder::by_probability;
  int64_t num_shared = 0, d_shared = 0;
  bool shared_gate = false;
  BalancingConfig balancing;
  double init_std = 0.02, out_init_std = 0.02;
  std::string experts_impl = "auto";  // moe.experts_impl: the Experts implementation (experts_registry.h)
  // Expert parallelism: the routed experts are split over this group and tokens reach them by
  // all-to-all; nullptr (or a group of one) = all experts on this rank.
  Communicator* ep_group = nullptr;
  // Tensor parallelism: the group shares the layer's input x[T,d]; rank r routes tokens
  // [r*T/tp, (r+1)*T/tp) through the (whole, replicated) router and routed experts, and the
  // outputs are all-gathered, so every token is routed and counted once. Sum-statistics terms
  // (Switch) add the slices' sums; per-token-mean terms (z, sequence-level) average the slices;
  // the others (importance, load, device-level) are rejected. Shared experts split
  // like a dense FFN. nullptr (or a group of one) = no tensor parallelism. (Each balancing term
  // declares its rule: routing/balancing_terms.h.)
  Communicator* tp_group = nullptr;
  // Sequence parallelism (parallel.sequence_parallel, with tp_group): x and y are already this
  // rank's slice [T/tp, d], so the routed part runs on them with no communication; the shared
  // experts gather and reduce-scatter the tokens (SharedExperts).
  bool sequence_parallel = false;
  // moe.balance_scope = "global_batch": the trainer pools the layers' Switch sums over the global
  // batch (on the device), so each forward keeps them (MoeLayerStats::pool).
  bool pool_balance_sums = false;
  // parallel.a2a_overlap: the shared experts run while the all-to-alls are in flight (forward:
  // between dispatch_start and dispatch_finish; backward: between combine_backward_start and
  // _finish), and the router's balancing terms between combine_start and combine_finish.
  // Off: the phases run whole, the shared experts before the combine (after the routed part under
  // tensor parallelism).
  bool a2a_overlap = false;
  // parallel.shared_expert_stream: on a GPU, with the routed experts on this rank (no expert
  // parallelism, which has a2a_overlap for this) and no tensor parallelism, the shared experts run
  // on a second stream (SideStream) while the routed part runs on the compute stream; the combine
  // adds their output and the dispatch's backward their input gradient, after joining it.
  bool shared_stream = false;
  // Called at each step of a forward and backward ("dispatch_start", "shared_forward",
  // "dispatch_finish", "combine_start", "combine_finish", "combine_backward_start",
  // "shared_backward", "combine_backward_finish"), after it: tests read the order from it.
  std::function<void(const char* phase)> on_phase;
};

// What one forward of one MoE layer reports.
struct MoeLayerStats {
  // Kept slots per expert (after capacity dropping) and the routed slots before capacity: read
  // from the device only when stats are collected or something needs them every step (pooled
  // sums); empty and 0 otherwise.
  std::vector<int64_t> tokens_per_expert;
  int64_t slots = 0, dropped = 0;          // routed slots before capacity, and those dropped
  // Each enabled balancing term (coefficients applied) and their sum. Terms that run on the GPU
  // are read from it only when stats are collected (absent otherwise).
  std::map<std::string, double> balance;
  double aux_loss = 0;
  double entropy = 0;                      // mean router entropy (when stats were collected)
  // balance_scope = global_batch: what the trainer pools over micro-batches and ranks, on the device:
  // this rank's score sums and the ids the Switch term counts (kept, or routed before capacity by
  // moe.aux_count), with their tokens and slots; undefined otherwise.
  struct PoolSums {
    Tensor score_sums;  // accum[E]
    Tensor ids;         // i32[T,k]
    int64_t tokens = 0, slots = 0;
  } pool;
  // i32[T,k] on the device: the experts after capacity dropping, which the trainer counts into the
  // aux-loss-free bias loads without a host copy; defined when the router has an expert bias.
  Tensor kept_ids;
  // A CUDA forward that collects statistics leaves them here, on the device, instead of waiting for
  // them mid-forward; read_device_stats copies them into the fields above once the step is queued.
  struct OnDevice {
    Tensor dropped;   // i64[1]: slots dropped by the capacity
    Tensor offsets;   // i32[E+1]: routed slots per expert as offsets (counts still on the device)
    Tensor balance;   // f64[n]: the values of balance_names
    std::vector<std::string> balance_names;
    Tensor entropy;   // f64[1]: mean router entropy
    bool pending = false;
  } on_device;
};

// Copies statistics a CUDA forward left on the device (stats.on_device) into stats' host fields
// and releases them (a wait for the device; nothing happens when none are pending).
void read_device_stats(MoeLayerStats& stats);

struct MoeLayerSaved {
  RouterSaved router;
  Tensor ids, weights;  // after capacity dropping (what dispatch and combine used)
  DispatchSaved dispatch;
  ExpertsSaved experts;
  // The routed part's input x[T,d] when the experts' input rows (experts.input) were dropped after
  // forward: backward dispatches it again (a gather) instead of keeping [T*k, d] rows per layer.
  Tensor routed_input;
  SharedExpertsSaved shared;
  // The experts' outputs, for the combine's backward (the weights' gradient); not kept when the
  // experts apply the weights in their backward (weights_in_experts: Experts::backward_weighted,
  // on one rank).
  Tensor y_sorted;
  bool weights_in_experts = false;
  RouterGrads balance_grads;  // gradients of the balancing terms on [T,*] inputs (unscaled)
  // d (per-expert terms: Switch, device-level) / d scores[t,i], the same for every token t
  // (unscaled): accum[E] on the scores' device; undefined = no such term.
  Tensor score_grad_row;
  MoeLayerStats stats;
};

class MoeLayer {
 public:
  MoeLayer(ParamStore& store, const std::string& prefix, const MoeLayerConfig& config, std::unique_ptr<Router> router);
  // x[T,d] -> y[T,d] (+ residual[T,d] when given: the block's residual stream); statistics in
  // saved.stats (entropy only when collect_stats). `other`: independent work (another micro-batch's
  // attention) run once, beside the shared experts: while the dispatch's all-to-all is in flight
  // under a2a_overlap, else before the combine. Without tensor parallelism the combine adds the
  // shared experts' output and the residual in its own pass.
  Tensor forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats = false,
                 const std::function<void()>& other = {}, const Tensor& residual = Tensor()) const;
  // dy[T,d] -> dx[T,d]. aux_scale multiplies the balancing losses' gradients (the factor the
  // trainer applies to this micro-batch's share of the loss). `other` runs once, while the
  // combine's backward all-to-all is in flight (always: the routed backward has that window).
  Tensor backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale,
                  const std::function<void()>& other = {}) const;

  // balance_scope = global_batch: the per-expert gradient row of the Switch term pooled over the
  // global batch (accum[E] on the device; d aux / d scores[t,i] = row[i] for every token t of this
  // micro-batch) replaces the micro-batch's own.
  void set_switch_gradient(MoeLayerSaved& saved, const Tensor& grad_row) const;

  const MoeLayerConfig& config() const { return config_; }
  const Router& router() const { return *router_; }
  const Experts& experts() const { return *experts_; }

 private:
  TpGroup tp() const { return {config_.tp_group, config_.sequence_parallel}; }
  // Whether the shared experts run on the side stream for input x (MoeLayerConfig::shared_stream).
  bool shared_on_side_stream(const Tensor& x) const;
  // The routed part (router, capacity, dispatch, experts, combine) on this rank's tokens.
  // `meanwhile` runs while the dispatch's all-to-all is in flight (a2a_overlap), else before the
  // combine when `addends` is given (it returns what the combine adds: DispatchSaved::combine_addends),
  // else after the routed part.
  Tensor routed_forward(const Tensor& x, const RouteInputs& inputs, MoeLayerSaved& saved, bool collect_stats,
                        const std::function<void()>& meanwhile,
                        const std::function<std::vector<Tensor>()>& addends = {}) const;
  // `meanwhile` runs while the combine's backward all-to-all is in flight, or after; `addend`
  // (after it) gives what the dispatch's backward adds to dx (the shared experts' input gradient).
  Tensor routed_backward(const MoeLayerSaved& saved, const Tensor& dy, float aux_scale,
                         const std::function<void()>& meanwhile, const std::function<Tensor()>& addend = {}) const;
  void phase(const char* name) const {
    if (config_.on_phase) config_.on_phase(name);
  }
  void compute_balancing_terms(const Routing& routing, const RouterSaved& router_saved, const RouteInputs& inputs,
                               MoeLayerSaved& saved, bool collect_stats) const;
  // The terms wholly on the scores' device (BalancingTerm::on_device): no host wait unless stats
  // are collected.
  void terms_on_device(const Routing& routing, const RouterSaved& router_saved, const RouteInputs& inputs,
                       const std::vector<const BalancingTerm*>& terms, MoeLayerSaved& saved,
                       bool collect_stats) const;
  // Tensor parallelism: in's score sums and counts <- their sums over the group (device), in.tokens
  // <- the tokens of all the slices.
  void pool_sums_over_tp(DeviceBalanceInputs& in, const BalancingConfig& b, const TpGroup& tp) const;
  // Whether a token-choice capacity drops this layer's slots (moe.capacity_factor > 0).
  bool drops_slots() const;

  MoeLayerConfig config_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<Experts> experts_;
  std::unique_ptr<SharedExperts> shared_;
};

}  // namespace moe

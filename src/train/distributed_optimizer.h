// Data-parallel optimizer for ZeRO stages 0-3: gradient reduction over the data-parallel (dense)
// and expert-data-parallel (expert) groups, global-norm clipping, AdamW on this rank's shard.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "parallel/communicator.h"
#include "src/config/config.h"
#include "src/nn/param_store.h"
#include "src/train/optimizer.h"

namespace moe {

// The parameters of one module ("embed", "layers.3", "final_norm", "lm_head"): a contiguous
// range of each group's flat buffers (empty where the unit has none in that group).
struct ParamUnit {
  std::string name;
  FlatRange range[k_num_param_groups];
};

// The units of a store in registration order: names "layers.<i>.*" form unit "layers.<i>",
// every other name its first component. Throws if a unit's parameters are not contiguous in a
// group (the model registers each block's parameters together, so they are).
std::vector<ParamUnit> param_units(const ParamStore& store);

// Shard layout (stage >= 1), per group of n elements over a group of N ranks:
//   S = ceil(n / N); rank r owns flat elements [r*S, min((r+1)*S, n)) -- contiguous equal
//   ranges of the flat buffer, the last ones shorter (or empty) where N does not divide n.
// The moments (stage >= 1), the reduced gradients (stage >= 2; with shard_gradients() the
// only gradients held between modules' backwards), a separate fp32 master
// (stage >= 1) and the parameters (stage 3) of a group exist on this rank for that range only.
// Collectives move the flat buffers in buckets of bucket_mb: stage 0/1 all-reduce buckets in
// place; stage 2/3 reduce-scatter and stage 1/2 all-gather round k take chunk k of every rank's
// range (c = bucket / N elements each) through a staging buffer of one bucket, so shards stay
// contiguous for any bucket size and N need not divide n.
//
// The norm: the expert-data-parallel group must be a subgroup of the data-parallel group with
// the data-parallel group made of ep x expert-DP ranks (ep = 1: the same ranks), as the
// topology builds them; expert parameters of different EP ranks are different parameters.
//
// Replaces the trainer's (average gradients -> clip -> AdamW.step) sequence:
//   store.zero_grads(); [stage 3: gather(unit) / release(unit) around each use of a module]
//   forward/backward ... ; reduce_gradients(); norm = clip_grad_norm(max); step(lr, t);
class DistributedOptimizer {
 public:
  // dense_group averages dense gradients, expert_group expert gradients; either may have one
  // rank and they may be the same object. bucket_mb: MiB per collective (parallel.bucket_mb).
  // Stage >= 1 shards the store (ParamStore::shard) here; the store must be allocated and
  // initialised (or loaded) first.
  DistributedOptimizer(ParamStore& store, const OptimConfig& config, int zero_stage, Communicator& dense_group,
                       Communicator& expert_group, double bucket_mb);

  int zero_stage() const { return stage_; }
  // The group that reduces group g's gradients.
  Communicator& comm(ParamGroup g) const { return *layout(g).comm; }
  // This rank's range of group g: [0, n) at stage 0, else as in the layout comment above.
  FlatRange shard_range(ParamGroup g) const { return layout(g).own; }
  // S: the per-rank range length before clipping to n (n at stage 0).
  int64_t shard_size(ParamGroup g) const { return layout(g).shard; }
  // Whether this parameter gets weight decay (as AdamW::decays).
  bool decays(const ParamInfo& p) const;

  // Stage 0/1: every rank's flat gradients <- their mean over the group (bucketed all-reduce).
  // Stage 2/3: only shard_range(g) of the flat gradients <- the mean over the group of that
  // range (bucketed reduce-scatter); elsewhere the buffer keeps this rank's own, unreduced
  // gradients, which nothing reads. Collective over both groups.
  void reduce_gradients();
  // Stage 0/1, overlap with the backward: starts the reduction of a unit's gradients as soon as
  // its backward is done (on the communicator's own stream where it has one); reduce_gradients()
  // then reduces what no unit covered and waits for all of it. Collective, in the same unit
  // order on every rank. A no-op at stage 2/3 (their reduce-scatter runs in reduce_gradients).
  void reduce_unit_async(const ParamUnit& unit);
  // ZeRO-2/3 without the full gradient buffer: from now on each rank keeps only its shard of the
  // reduced gradients (ParamStore::shard_grads). A module's gradients exist from open_grads (call
  // it before the module's backward writes them) to reduce_unit_grads, which reduces
  // them (the mean over the group of this rank's part only, by a bucketed variable reduce-scatter
  // of the module's buffer cut at the shard borders, expert scale applied), adds that part to its
  // shard and frees them; a module used by several micro-batches is reduced after each
  // one's backward. reduce_gradients() then reduces what is still open, in opening order.
  // open_grads is local and idempotent; reduce_unit_grads is collective over the module's
  // groups, in the same order on every rank. Both are no-ops until shard_gradients().
  void shard_gradients();
  bool gradients_sharded() const;
  void open_grads(const ParamUnit& unit);
  void reduce_unit_grads(const ParamUnit& unit);
  // A factor applied to the expert gradients before they are reduced (1/ep under expert
  // parallelism: each expert's gradient already sums its EP group's tokens).
  void set_expert_grad_scale(float scale) { expert_grad_scale_ = scale; }
  // The global L2 norm of the reduced gradients, every parameter counted once, and the clip
  // scale min(1, max_norm / norm) (1 when max_norm <= 0), both kept on the device: the next
  // step() multiplies the gradients by the scale as it reads them (the buffers stay unscaled).
  // One rank's norm (stage 0/1 without expert parallelism, or a single-rank DP group at stage
  // 2/3, without TP/PP) never leaves the device; sums over ranks go through the host (one wait).
  // Collective over the data-parallel group at stage 2/3 or with expert parallelism.
  void clip_grads(double max_norm);
  // Whether clip_grads stays on the device (no host wait, no collective): one rank's norm.
  bool norm_stays_on_device() const;
  // The norm of the last clip_grads (reads it from the device: a host wait). Same on every rank.
  double grad_norm() const;
  // clip_grads then grad_norm.
  double clip_grad_norm(double max_norm);
  // The clip scale of the last clip_grads (f32[1] on the device): NaN when the norm was not
  // finite or the update was cancelled, and then step() leaves weights and moments untouched.
  const Tensor& clip_scale() const { return clip_scale_; }
  // Makes the next step() a no-op on weights and moments (the clip scale becomes NaN; an upload,
  // no host wait). After clip_grads only.
  void cancel_update();
  // Tensor and pipeline parallelism: the norm also sums over `group` (the ranks of one
  // data-parallel replica), each parameter's squares weighted by weights[id]: 1 for a part only
  // this rank holds (a TP shard, a stage's layer), 1/tp for one replicated over the TP group,
  // 0 for a pipeline copy counted by its owner.
  void set_model_parallel_norm(Communicator* group, std::vector<double> weights);
  // AdamW (decoupled weight decay by parameter kind, buffers skipped) on this rank's range of
  // the master weights, with the clip scale of clip_grads when it ran this step, writing the
  // compute copy of the range in the same launch; then stage 1/2 all-gather the compute copy so every rank holds the
  // full parameters, stage 3 refreshes only the local parameter shard. `step` is 1-based.
  // Collective at stage 1/2. At stage 3 every gathered range must be released first.
  void step(double lr, int64_t step);
  // Stage 0: the same update one unit at a time, in the order of `units` (which must cover every
  // parameter), calling after(unit) once a unit's update is queued (where the trainer notes that
  // the next forward may use it). AdamW is elementwise, so the values equal step()'s.
  void prepare_unit_steps(const std::vector<ParamUnit>& units);
  void step_by_unit(double lr, int64_t step, const std::function<void(const ParamUnit&)>& after);

  // ZeRO-3: make a unit's (or one group's range of) parameters readable through
  // ParamStore::param until released. Ranges are reference-counted: gathering a range that is
  // already gathered only counts. Collective over the range's group (every rank makes the same
  // calls); no-ops below stage 3, so a model can call them unconditionally.
  void gather(const ParamUnit& unit);
  void release(const ParamUnit& unit);
  void gather(ParamGroup g, FlatRange range);
  void release(ParamGroup g, FlatRange range);
  // One unit spanning every parameter (gather the whole model around forward/backward).
  ParamUnit all_params() const;

  // The moments of this rank's range, flat [shard_range(g).numel()], master dtype.
  Tensor& moment1(ParamGroup g) { return m_[static_cast<int>(g)]; }
  Tensor& moment2(ParamGroup g) { return v_[static_cast<int>(g)]; }

  // Checkpoints stay layout-independent: full host copies (master dtype, the parameter's
  // shape), assembled from the shards. Collective over the parameter's group whenever that
  // state is sharded: every rank of the group calls them for the same parameters in order.
  Tensor full_master(ParamId id);
  Tensor full_moment1(ParamId id);
  Tensor full_moment2(ParamId id);
  // Every rank passes the full host values; each keeps its range's part. Not collective.
  // (Weights load with ParamStore::load_master_from_host, which is shard-aware.)
  void load_full_moments(ParamId id, const Tensor& moment1, const Tensor& moment2);

 private:
  struct Layout {
    Communicator* comm = nullptr;
    int64_t numel = 0;  // n
    int size = 1, rank = 0;
    bool sharded = false;  // stage >= 1
    int64_t shard = 0;     // S
    FlatRange own;         // this rank's range
    FlatRange owned_by(int r) const;
  };
  const Layout& layout(ParamGroup g) const { return layouts_[static_cast<int>(g)]; }
  void reduce_scatter_avg(ParamGroup g);
  void all_gather_params(ParamGroup g);
  // out[range.numel()] <- flat elements `range` from the ranks' local ranges `local`
  // ([own.numel()] on each rank); collective over the group when sharded.
  void gather_range(ParamGroup g, const Tensor& local, FlatRange range, Tensor& out);
  Tensor full_state(ParamId id, const Tensor& local);
  int64_t bucket_numel(DType dtype) const;

  ParamStore* store_;
  OptimConfig config_;
  int stage_;
  size_t bucket_bytes_;
  float expert_grad_scale_ = 1.0f;
  Communicator* model_parallel_ = nullptr;
  std::vector<double> norm_weights_;  // per parameter; empty = all 1
  void weighted_sum_squares(ParamGroup g, const Tensor& held, FlatRange held_range, Tensor acc) const;
  bool expert_parallel() const;  // the expert group is smaller than the dense one
  bool model_parallel() const;   // a tensor- or pipeline-parallel group of more than one rank
  Tensor norm_sq_;     // f64[groups] on the device: this step's sums of squares
  Tensor clip_scale_;  // f32[1] on the device: the factor step() applies to the gradients
  bool clip_pending_ = false;  // clip_grads ran since the last step()
  std::vector<FlatRange> reduced_[k_num_param_groups];  // ranges reduce_unit_async started this step
  std::vector<FlatRange> open_[k_num_param_groups];     // sharded gradients: open module ranges, in order
  void scale_expert_grads(FlatRange range);
  Layout layouts_[k_num_param_groups];
  AdamWUpdate update_[k_num_param_groups];  // AdamW on this rank's range
  struct UnitUpdate {
    ParamUnit unit;
    AdamWUpdate update[k_num_param_groups];
  };
  std::vector<UnitUpdate> unit_updates_;  // prepare_unit_steps
  Tensor m_[k_num_param_groups], v_[k_num_param_groups];
  std::map<std::pair<int64_t, int64_t>, int> gathered_[k_num_param_groups];  // stage 3 reference counts
};

}  // namespace moe

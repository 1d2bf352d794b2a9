// Parameters in flat buffers grouped by how they are synchronised (dense over the DP group,
// expert over the expert-DP group), each with a canonical name, shape and weight-decay flag.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/tensor/tensor.h"

namespace moe {

enum class ParamGroup : uint8_t { dense = 0, expert = 1 };
constexpr int k_num_param_groups = 2;

enum class ParamInit : uint8_t { normal, zeros, ones };

// What a parameter is, which decides its default weight decay (none on norms, biases and
// embeddings unless the optimizer config says otherwise).
// Buffers (the aux-loss-free expert bias) are state saved with the weights but never trained:
// no gradient reaches them and the optimizer skips them.
enum class ParamKind : uint8_t { weight, norm_or_bias, embedding, buffer };

// The group whose ranks hold different parts of a split parameter: the expert-parallel group
// (routed experts by expert) or the tensor-parallel group (heads, hidden units, vocabulary).
enum class SplitOver : uint8_t { none, ep, tp };

struct ParamInfo {
  std::string name;  // canonical, e.g. "layers.3.moe.experts.w_up"
  Shape shape;
  ParamGroup group = ParamGroup::dense;
  ParamKind kind = ParamKind::weight;
  ParamInit init = ParamInit::normal;
  double init_std = 0.02;
  int64_t offset = 0;  // element offset in its group's flat buffers
  // Expert parallelism: this rank holds rows [row_offset, row_offset + shape[0]) of a parameter
  // whose whole (canonical, checkpointed) shape is full_shape; empty full_shape = not split.
  Shape full_shape;
  int64_t row_offset = 0;
  // Tensor parallelism, column-parallel W[in,out]: the last dim of full_shape is cut into
  // col_blocks equal blocks (2 for a GLU w_up = [gate | up], else 1) and this rank holds columns
  // [col_offset, col_offset + shape.back() / col_blocks) of every block, stored block after
  // block (so a GLU shard is again [gate | up]). 0 = not a column shard. A column shard also
  // sets full_shape, so "full_shape not empty" means "split", row or column.
  int64_t col_blocks = 0;
  int64_t col_offset = 0;
  SplitOver split_over = SplitOver::none;
  // Tensor parallelism with token slices (the MoE layer's router and routed experts): each TP
  // rank's gradient covers its own tokens only, so the group's gradients are summed before the
  // data-parallel reduction. Other parameters get identical gradients on every TP rank.
  bool tp_partial_grad = false;
  // Pipeline parallelism with tied embeddings: the last stage's copy of embed.tokens. Its
  // gradient is summed with the first stage's, it is saved and counted once (by the first stage).
  bool pipeline_copy = false;
  int64_t numel() const { return shape_numel(shape); }
  bool is_row_shard() const { return !full_shape.empty() && col_blocks == 0; }
  bool is_col_shard() const { return col_blocks > 0; }
  bool is_split() const { return !full_shape.empty(); }
};

// The part of the canonical (whole-shape) host tensor `full` that a parameter registered as
// `info` holds: its rows, its columns, or `full` itself when not split. Row shards return a view.
Tensor local_part(const ParamInfo& info, const Tensor& full);
// The inverse: writes this rank's values `local` (info.shape) into their place in the host
// tensor `full` (info.full_shape, same dtype); other elements are left as they are.
void place_local_part(const ParamInfo& info, const Tensor& local, Tensor& full);

using ParamId = int32_t;

// An element range [begin, end) of one group's flat buffers.
struct FlatRange {
  int64_t begin = 0, end = 0;
  int64_t numel() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
  bool contains(const FlatRange& r) const { return r.begin >= begin && r.end <= end; }
  bool operator==(const FlatRange&) const = default;
};
// The overlap of two ranges (empty when they do not overlap).
inline FlatRange intersect(const FlatRange& a, const FlatRange& b) {
  FlatRange r{a.begin > b.begin ? a.begin : b.begin, a.end < b.end ? a.end : b.end};
  return r.empty() ? FlatRange{r.begin, r.begin} : r;
}

// Register all parameters first, then allocate(): every buffer is one flat tensor per group.
// On the CPU the parameters are their own master copy; with bf16 compute, `master` is a
// separate fp32 buffer and `params` the bf16 copy the kernels read.
class ParamStore {
 public:
  ParamId add(const std::string& name, const Shape& shape, ParamGroup group, ParamKind kind,
              ParamInit init = ParamInit::normal, double init_std = 0.02);
  // A parameter of which this rank holds rows [row_offset, row_offset + rows) of full_shape,
  // the other rows living on the other ranks of the `over` group.
  ParamId add_row_shard(const std::string& name, const Shape& full_shape, int64_t row_offset, int64_t rows,
                        SplitOver over, ParamGroup group, ParamKind kind, ParamInit init = ParamInit::normal,
                        double init_std = 0.02);
  // Tensor parallelism: this rank holds columns [col_offset, col_offset + cols) of each of the
  // col_blocks equal blocks of full_shape's last dim (see ParamInfo::col_blocks); its shape is
  // full_shape with the last dim cols * col_blocks. Split over the TP group.
  ParamId add_col_shard(const std::string& name, const Shape& full_shape, int64_t col_offset, int64_t cols,
                        int64_t col_blocks, ParamGroup group, ParamKind kind, ParamInit init = ParamInit::normal,
                        double init_std = 0.02);
  void allocate(Device device, DType compute_dtype);
  // Deterministic initialisation: each element's value is a pure function of (seed, name, its
  // index in the whole parameter) (src/nn/param_init.h), so any parallel layout, ZeRO stage and
  // thread count builds the same model. A rank evaluates only the elements it holds (under ZeRO-3
  // only its flat range), over num_threads OpenMP threads (<= 0: the OpenMP default).
  void initialize(uint64_t seed, int num_threads = 0);

  const std::vector<ParamInfo>& infos() const { return infos_; }
  const ParamInfo& info(ParamId id) const { return infos_.at(static_cast<size_t>(id)); }
  ParamId find(const std::string& name) const;  // throws naming the parameter
  // Flags set by the model after registration (see ParamInfo).
  void mark_tp_partial_grad(const std::string& name_prefix);
  void mark_pipeline_copy(ParamId id) { infos_.at(static_cast<size_t>(id)).pipeline_copy = true; }
  int64_t group_numel(ParamGroup g) const { return group_numel_[static_cast<int>(g)]; }
  int64_t total_numel() const;

  Tensor param(ParamId id) const;
  Tensor grad(ParamId id) const;
  Tensor master(ParamId id) const;
  FlatRange range(ParamId id) const { return {info(id).offset, info(id).offset + info(id).numel()}; }

  Tensor& flat_params(ParamGroup g);
  // The group's whole gradient buffer; throws once the gradients are sharded (shard_grads). Its
  // first-write gradients are zeroed here if unwritten: take it again after each zero_grads rather
  // than keeping a view across one.
  Tensor& flat_grads(ParamGroup g);
  Tensor& flat_master(ParamGroup g);
  bool has_separate_master() const { return separate_master_; }

  // Zeroes every gradient this rank holds (the full buffers, or the shards and attached ranges).
  // Gradients marked with mark_first_write_grad are not cleared here but recorded as unwritten.
  void zero_grads();
  // First-write gradients: a parameter whose gradient one kernel writes whole (the grouped
  // experts' weight GEMMs) skips zero_grads' memset, and its first writer of the step stores
  // instead of adding (a read of the fp32 gradient and a memset saved, 8 bytes a parameter).
  // grad(id), flat_grads and grad_shard zero an unwritten gradient before handing it out, so
  // every other reader and writer sees a zeroed gradient as before. Unsharded gradients only
  // (ZeRO-2/3 gradients keep zero_grads' memset).
  void mark_first_write_grad(ParamId id);
  struct GradWrite {
    Tensor grad;
    bool accumulate = true;  // false: the first write of the step; store, do not add
  };
  // The gradient of id for a writer that covers all of it, and whether it must add to it.
  GradWrite grad_for_write(ParamId id);
  // After an optimizer step on the master copy: refresh the compute copy (bf16 cast).
  void sync_params_from_master();
  // What sync_params_from_master writes for group g: the compute copy of master_shard(g)
  // (undefined where the master is the compute copy). The fused AdamW writes it in its pass.
  Tensor compute_copy_of_master(ParamGroup g);
  // Host copies of the master values as f32 (checkpoints) and loading them back.
  Tensor master_to_host_f32(ParamId id) const;
  void load_master_from_host(ParamId id, const Tensor& host_values);
  // After master(id) was changed in place on the device (the aux-loss-free bias update): its other
  // copies (a sharded master's range, the compute copy) are refreshed by device copies, no host
  // wait. Under a sharded master only buffers (a full master on every rank) qualify.
  void refresh_from_master(ParamId id);

  Device device() const { return device_; }
  DType compute_dtype() const { return compute_dtype_; }
  DType master_dtype() const;

  // ---- ZeRO sharding, driven by DistributedOptimizer; a store that never calls shard()
  // behaves exactly as before. ----
  // From now on this rank keeps only flat elements `range` of group g's master weights (a
  // separate fp32 master is cut down to the range) and, with `params` (ZeRO-3), of its compute
  // copy too (the full compute buffer is freed). Afterwards:
  //  - master(id) reads parameters inside the range; buffers (ParamKind::buffer) keep a full
  //    master copy on every rank, since the model reads and rewrites them between steps; any
  //    other parameter throws (DistributedOptimizer::full_master gathers it);
  //  - param(id) of a sharded compute copy reads the ranges attached with attach_params (ZeRO-3
  //    gathers a block there before using it) and throws for any other parameter;
  //  - load_master_from_host stays local (every rank passes the full values and keeps its part);
  //  - sync_params_from_master refreshes the compute copy of the range only (the optimizer
  //    all-gathers the rest).
  void shard(ParamGroup g, FlatRange range, bool params);
  bool master_sharded(ParamGroup g) const { return shard_[static_cast<int>(g)].master; }
  bool params_sharded(ParamGroup g) const { return shard_[static_cast<int>(g)].params; }
  // [0, group_numel) until shard() is called.
  FlatRange shard_range(ParamGroup g) const;
  // The master / compute values of shard_range(g), flat (views of the full buffers where those exist).
  Tensor master_shard(ParamGroup g) const;
  Tensor param_shard(ParamGroup g) const;
  // ZeRO-3: values[range.numel()] (compute dtype, the store's device) hold flat elements
  // `range` of group g until detached; param(id) reads parameters that lie inside one.
  void attach_params(ParamGroup g, FlatRange range, Tensor values);
  void detach_params(ParamGroup g, FlatRange range);
  int64_t num_attached(ParamGroup g) const { return static_cast<int64_t>(attached_[static_cast<int>(g)].size()); }

  // ZeRO-2/3 gradients: from now on this rank keeps group g's gradients only for flat elements
  // `range` (grad_shard, the reduced values) and the full gradient buffer is freed. During the
  // backward grad(id) reads the ranges attached with attach_grads (a module's gradients, from
  // its backward until DistributedOptimizer reduce-scatters them) and throws for any other.
  void shard_grads(ParamGroup g, FlatRange range);
  bool grads_sharded(ParamGroup g) const { return grads_sharded_[static_cast<int>(g)]; }
  // The gradients of shard_range(g) (a view of the full buffer until shard_grads).
  Tensor grad_shard(ParamGroup g) const;
  // values[range.numel()] (accumulation dtype, the store's device) hold the gradients of flat
  // elements `range` of group g until detached. Sharded gradients only.
  void attach_grads(ParamGroup g, FlatRange range, Tensor values);
  void detach_grads(ParamGroup g, FlatRange range);
  // The attached gradient values of exactly `range` (undefined when none is attached).
  Tensor attached_grads(ParamGroup g, FlatRange range) const;

 private:
  struct ShardState {
    bool active = false, master = false, params = false;
    FlatRange range;
  };
  struct Attached {
    FlatRange range;
    Tensor values;
  };
  Tensor view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const;
  // Writes host values already in the master dtype: the whole parameter (store_master; a sharded
  // master keeps its part) or flat elements `part` of the rank's shard range.
  void store_master(ParamId id, const Tensor& converted);
  void store_master_shard_part(ParamId id, FlatRange part, const Tensor& values);
  void check_attachable(const char* what, ParamGroup g, FlatRange range, const Tensor& values, DType dtype) const;
  static bool detach(std::vector<Attached>& list, FlatRange range);
  // The view of p inside an attached range of `list` (undefined when none holds it).
  Tensor attached_view(const std::vector<Attached>& list, const ParamInfo& p) const;
  const Tensor (&master_or_params() const)[k_num_param_groups] { return separate_master_ ? master_ : params_; }
  // zero_grads of an unsharded group: a memset of everything but the first-write gradients,
  // which are recorded as unwritten instead.
  void zero_group_grads_but_first_write(ParamGroup g);
  // Zeroes the unwritten first-write gradients (of one parameter, or of a group).
  void zero_unwritten(ParamId id) const;
  void zero_unwritten(ParamGroup g) const;

  std::vector<ParamInfo> infos_;
  std::map<std::string, ParamId> by_name_;
  int64_t group_numel_[k_num_param_groups] = {0, 0};
  Tensor params_[k_num_param_groups];
  Tensor grads_[k_num_param_groups];
  Tensor master_[k_num_param_groups];
  bool separate_master_ = false;
  bool allocated_ = false;
  ShardState shard_[k_num_param_groups];
  Tensor master_shard_[k_num_param_groups], param_shard_[k_num_param_groups];
  std::map<ParamId, Tensor> buffer_master_;  // full master values of buffers in sharded groups
  std::vector<Attached> attached_[k_num_param_groups];
  bool grads_sharded_[k_num_param_groups] = {false, false};
  Tensor grad_shard_[k_num_param_groups];
  std::vector<Attached> attached_grads_[k_num_param_groups];
  // First-write gradients (mark_first_write_grad) and which of them are unwritten since zero_grads.
  // Mutable: zeroing an unwritten gradient on first read does not change its value.
  std::vector<ParamId> first_write_;
  mutable std::vector<bool> unwritten_;
  Device device_;
  DType compute_dtype_ = DType::f32;
};

}  // namespace moe

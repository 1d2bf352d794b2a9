// Flat parameter buffers: registration, allocation, name-seeded initialisation, and the
// master/compute copies used by mixed precision.
#include "src/nn/param_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "src/nn/param_init.h"
#include "src/ops/ops.h"
#include "src/util/progress.h"

namespace moe {

ParamId ParamStore::add(const std::string& name, const Shape& shape, ParamGroup group, ParamKind kind, ParamInit init,
                        double init_std) {
  MOE_CHECK(!allocated_, "parameter '", name, "' added after allocation");
  MOE_CHECK(!by_name_.count(name), "duplicate parameter name '", name, "'");
  ParamInfo info{name, shape, group, kind, init, init_std, group_numel_[static_cast<int>(group)]};
  group_numel_[static_cast<int>(group)] += info.numel();
  infos_.push_back(info);
  auto id = static_cast<ParamId>(infos_.size() - 1);
  by_name_[name] = id;
  return id;
}

ParamId ParamStore::add_row_shard(const std::string& name, const Shape& full_shape, int64_t row_offset, int64_t rows,
                                  SplitOver over, ParamGroup group, ParamKind kind, ParamInit init, double init_std) {
  MOE_CHECK(!full_shape.empty() && row_offset >= 0 && rows >= 0 && row_offset + rows <= full_shape[0],
            "parameter '", name, "': rows [", row_offset, ",", row_offset + rows, ") outside ", shape_str(full_shape));
  Shape local = full_shape;
  local[0] = rows;
  ParamId id = add(name, local, group, kind, init, init_std);
  infos_[static_cast<size_t>(id)].full_shape = full_shape;
  infos_[static_cast<size_t>(id)].row_offset = row_offset;
  infos_[static_cast<size_t>(id)].split_over = over;
  return id;
}

ParamId ParamStore::add_col_shard(const std::string& name, const Shape& full_shape, int64_t col_offset, int64_t cols,
                                  int64_t col_blocks, ParamGroup group, ParamKind kind, ParamInit init, double init_std) {
  MOE_CHECK(!full_shape.empty() && col_blocks > 0 && full_shape.back() % col_blocks == 0, "parameter '", name,
            "': ", shape_str(full_shape), " does not split into ", col_blocks, " column blocks");
  const int64_t block = full_shape.back() / col_blocks;
  MOE_CHECK(col_offset >= 0 && cols >= 0 && col_offset + cols <= block, "parameter '", name, "': columns [",
            col_offset, ",", col_offset + cols, ") outside a block of ", block, " of ", shape_str(full_shape));
  Shape local = full_shape;
  local.back() = cols * col_blocks;
  ParamId id = add(name, local, group, kind, init, init_std);
  ParamInfo& p = infos_[static_cast<size_t>(id)];
  p.full_shape = full_shape;
  p.col_blocks = col_blocks;
  p.col_offset = col_offset;
  p.split_over = SplitOver::tp;
  return id;
}

namespace {

// Copies the column shard's bytes between the whole tensor and the local one, either way.
void copy_columns(const ParamInfo& info, const Tensor& full, const Tensor& local, bool to_local) {
  MOE_CHECK(!full.is_cuda() && !local.is_cuda() && full.dtype() == local.dtype(), "parameter '", info.name,
            "': column shards are copied between host tensors of one dtype");
  MOE_CHECK(full.shape() == info.full_shape && local.shape() == info.shape, "parameter '", info.name, "': expected ",
            shape_str(info.full_shape), " and ", shape_str(info.shape), ", got ", shape_str(full.shape()), " and ",
            shape_str(local.shape()));
  const size_t elem = dtype_size(full.dtype());
  const int64_t full_cols = info.full_shape.back(), local_cols = info.shape.back();
  const int64_t block = full_cols / info.col_blocks, cols = local_cols / info.col_blocks;
  const int64_t rows = info.numel() / local_cols;
  auto* f = static_cast<char*>(full.data());
  auto* l = static_cast<char*>(local.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < info.col_blocks; ++b) {
      char* fp = f + static_cast<size_t>(r * full_cols + b * block + info.col_offset) * elem;
      char* lp = l + static_cast<size_t>(r * local_cols + b * cols) * elem;
      if (to_local) {
        std::memcpy(lp, fp, static_cast<size_t>(cols) * elem);
      } else {
        std::memcpy(fp, lp, static_cast<size_t>(cols) * elem);
      }
    }
  }
}

}  // namespace

Tensor local_part(const ParamInfo& info, const Tensor& full) {
  if (info.is_row_shard()) return full.rows(info.row_offset, info.row_offset + info.shape[0]);
  if (!info.is_col_shard()) return full;
  Tensor local = Tensor::empty(info.shape, full.dtype());
  copy_columns(info, full, local, true);
  return local;
}

void place_local_part(const ParamInfo& info, const Tensor& local, Tensor& full) {
  if (info.is_col_shard()) {
    copy_columns(info, full, local, false);
    return;
  }
  Tensor target = info.is_row_shard() ? full.rows(info.row_offset, info.row_offset + info.shape[0]) : full;
  target.copy_from(local);
}

void ParamStore::mark_tp_partial_grad(const std::string& name_prefix) {
  for (ParamInfo& p : infos_) {
    if (p.name.compare(0, name_prefix.size(), name_prefix) == 0) p.tp_partial_grad = true;
  }
}

ParamId ParamStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  MOE_CHECK(it != by_name_.end(), "unknown parameter '", name, "'");
  return it->second;
}

int64_t ParamStore::total_numel() const { return group_numel_[0] + group_numel_[1]; }

void ParamStore::allocate(Device device, DType compute_dtype) {
  MOE_CHECK(!allocated_, "parameters allocated twice");
  device_ = device;
  compute_dtype_ = compute_dtype;
  DType accum = ops::accum_dtype(compute_dtype);
  separate_master_ = accum != compute_dtype;
  for (int g = 0; g < k_num_param_groups; ++g) {
    params_[g] = Tensor::zeros({group_numel_[g]}, compute_dtype, device);
    grads_[g] = Tensor::zeros({group_numel_[g]}, accum, device);
    if (separate_master_) master_[g] = Tensor::zeros({group_numel_[g]}, accum, device);
  }
  allocated_ = true;
}

Tensor& ParamStore::flat_master(ParamGroup g) {
  MOE_CHECK(!master_sharded(g), "the master weights of the ", g == ParamGroup::dense ? "dense" : "expert",
            " group are sharded over ranks (ZeRO): this rank holds only its shard (ParamStore::master_shard)");
  return separate_master_ ? master_[static_cast<int>(g)] : params_[static_cast<int>(g)];
}

Tensor& ParamStore::flat_params(ParamGroup g) {
  MOE_CHECK(!params_sharded(g), "the parameters of the ", g == ParamGroup::dense ? "dense" : "expert",
            " group are sharded over ranks (ZeRO-3): this rank holds only its shard (ParamStore::param_shard)");
  return params_[static_cast<int>(g)];
}

DType ParamStore::master_dtype() const { return ops::accum_dtype(compute_dtype_); }

Tensor ParamStore::param(ParamId id) const {
  const ParamInfo& p = info(id);
  int g = static_cast<int>(p.group);
  if (!shard_[g].params) return view(params_, id);
  Tensor values = attached_view(attached_[g], p);
  MOE_CHECK(values.defined(), "parameter '", p.name, "' is not gathered on this rank: under ZeRO-3 gather its block ",
            "(DistributedOptimizer::gather) before using it");
  return values;
}

Tensor ParamStore::master(ParamId id) const {
  const ParamInfo& p = info(id);
  int g = static_cast<int>(p.group);
  if (!shard_[g].master) return view(master_or_params(), id);
  if (p.kind == ParamKind::buffer) return buffer_master_.at(id);
  FlatRange r = range(id), own = shard_[g].range;
  MOE_CHECK(own.contains(r), "the master weights of '", p.name, "' are sharded over ranks (ZeRO) and this rank ",
            "holds only part of them: gather them with DistributedOptimizer::full_master");
  return master_shard_[g].rows(r.begin - own.begin, r.end - own.begin).view(p.shape);
}

FlatRange ParamStore::shard_range(ParamGroup g) const {
  const ShardState& s = shard_[static_cast<int>(g)];
  return s.active ? s.range : FlatRange{0, group_numel(g)};
}

Tensor ParamStore::master_shard(ParamGroup g) const {
  MOE_CHECK(allocated_, "parameters used before allocation");
  int i = static_cast<int>(g);
  if (shard_[i].master) return master_shard_[i];
  FlatRange r = shard_range(g);
  return master_or_params()[i].rows(r.begin, r.end);
}

Tensor ParamStore::param_shard(ParamGroup g) const {
  MOE_CHECK(allocated_, "parameters used before allocation");
  int i = static_cast<int>(g);
  if (shard_[i].params) return param_shard_[i];
  FlatRange r = shard_range(g);
  return params_[i].rows(r.begin, r.end);
}

void ParamStore::shard(ParamGroup g, FlatRange range, bool params) {
  MOE_CHECK(allocated_, "parameters sharded before allocation");
  int i = static_cast<int>(g);
  MOE_CHECK(!shard_[i].active, "the ", g == ParamGroup::dense ? "dense" : "expert", " group is already sharded");
  MOE_CHECK(range.begin >= 0 && range.begin <= range.end && range.end <= group_numel_[i], "shard range [",
            range.begin, ",", range.end, ") is outside the group's ", group_numel_[i], " elements");
  ShardState& s = shard_[i];
  s.active = true;
  s.range = range;
  s.params = params;
  s.master = separate_master_ || params;
  if (!s.master) return;  // the full compute buffer stays and is its own master
  // Buffers keep their full master values (the model reads and rewrites them between steps).
  for (size_t id = 0; id < infos_.size(); ++id) {
    const ParamInfo& p = infos_[id];
    if (p.group == g && p.kind == ParamKind::buffer) {
      buffer_master_[static_cast<ParamId>(id)] = view(master_or_params(), static_cast<ParamId>(id)).clone();
    }
  }
  Tensor& full_master = separate_master_ ? master_[i] : params_[i];
  master_shard_[i] = full_master.rows(range.begin, range.end).clone();
  if (params) param_shard_[i] = separate_master_ ? params_[i].rows(range.begin, range.end).clone() : master_shard_[i];
  if (separate_master_) master_[i] = Tensor();
  if (params) params_[i] = Tensor();
}

namespace {

const char* group_label(ParamGroup g) { return g == ParamGroup::dense ? "dense" : "expert"; }

}  // namespace

void ParamStore::check_attachable(const char* what, ParamGroup g, FlatRange range, const Tensor& values,
                                  DType dtype) const {
  const int i = static_cast<int>(g);
  MOE_CHECK(range.begin >= 0 && range.begin <= range.end && range.end <= group_numel_[i], what, ": range [",
            range.begin, ",", range.end, ") is outside the ", group_label(g), " group's ", group_numel_[i], " elements");
  MOE_CHECK(values.numel() == range.numel() && values.dtype() == dtype && values.device() == device_, what,
            ": expected ", range.numel(), " ", dtype_name(dtype), " values on ", device_.str(), ", got ",
            values.numel(), " ", dtype_name(values.dtype()), " on ", values.device().str());
}

void ParamStore::attach_params(ParamGroup g, FlatRange range, Tensor values) {
  int i = static_cast<int>(g);
  MOE_CHECK(shard_[i].params, "attach_params: the group's parameters are not sharded (ZeRO-3 only)");
  check_attachable("attach_params", g, range, values, compute_dtype_);
  attached_[i].push_back({range, values.view({values.numel()})});
}

void ParamStore::detach_params(ParamGroup g, FlatRange range) {
  MOE_CHECK(detach(attached_[static_cast<int>(g)], range), "detach_params: range [", range.begin, ",", range.end,
            ") is not attached");
}

bool ParamStore::detach(std::vector<Attached>& list, FlatRange range) {
  for (auto it = list.begin(); it != list.end(); ++it) {
    if (it->range == range) {
      list.erase(it);
      return true;
    }
  }
  return false;
}

Tensor ParamStore::attached_view(const std::vector<Attached>& list, const ParamInfo& p) const {
  const FlatRange r{p.offset, p.offset + p.numel()};
  for (const Attached& a : list) {
    if (a.range.contains(r)) return a.values.rows(r.begin - a.range.begin, r.end - a.range.begin).view(p.shape);
  }
  return {};
}

void ParamStore::shard_grads(ParamGroup g, FlatRange range) {
  const int i = static_cast<int>(g);
  MOE_CHECK(shard_[i].active && shard_[i].range == range, "shard_grads: the ", group_label(g),
            " group's gradients are sharded over the range its weights are sharded over (ParamStore::shard first)");
  MOE_CHECK(!grads_sharded_[i], "the ", group_label(g), " group's gradients are already sharded");
  grad_shard_[i] = Tensor::zeros({range.numel()}, master_dtype(), device_);
  grads_[i] = Tensor();  // the full gradient buffer is never allocated again
  grads_sharded_[i] = true;
  for (ParamId id : first_write_) {  // sharded gradients are zeroed by zero_grads, never left unwritten
    if (info(id).group == g && static_cast<size_t>(id) < unwritten_.size()) unwritten_[static_cast<size_t>(id)] = false;
  }
}

Tensor ParamStore::grad_shard(ParamGroup g) const {
  MOE_CHECK(allocated_, "parameters used before allocation");
  const int i = static_cast<int>(g);
  if (grads_sharded_[i]) return grad_shard_[i];
  zero_unwritten(g);
  const FlatRange r = shard_range(g);
  return grads_[i].rows(r.begin, r.end);
}

void ParamStore::attach_grads(ParamGroup g, FlatRange range, Tensor values) {
  const int i = static_cast<int>(g);
  MOE_CHECK(grads_sharded_[i], "attach_grads: the ", group_label(g), " group's gradients are not sharded (ZeRO-2/3 only)");
  check_attachable("attach_grads", g, range, values, master_dtype());
  for (const Attached& a : attached_grads_[i]) {
    MOE_CHECK(intersect(a.range, range).empty(), "attach_grads: range [", range.begin, ",", range.end,
              ") overlaps the attached range [", a.range.begin, ",", a.range.end, ")");
  }
  attached_grads_[i].push_back({range, values.view({values.numel()})});
}

void ParamStore::detach_grads(ParamGroup g, FlatRange range) {
  MOE_CHECK(detach(attached_grads_[static_cast<int>(g)], range), "detach_grads: range [", range.begin, ",",
            range.end, ") is not attached");
}

Tensor ParamStore::attached_grads(ParamGroup g, FlatRange range) const {
  for (const Attached& a : attached_grads_[static_cast<int>(g)]) {
    if (a.range == range) return a.values;
  }
  return {};
}

Tensor& ParamStore::flat_grads(ParamGroup g) {
  MOE_CHECK(!grads_sharded(g), "the gradients of the ", group_label(g), " group are sharded over ranks (ZeRO-2/3): ",
            "this rank holds only its shard (ParamStore::grad_shard)");
  zero_unwritten(g);
  return grads_[static_cast<int>(g)];
}

Tensor ParamStore::grad(ParamId id) const {
  const ParamInfo& p = info(id);
  const int g = static_cast<int>(p.group);
  if (!grads_sharded_[g]) {
    zero_unwritten(id);
    return view(grads_, id);
  }
  Tensor values = attached_view(attached_grads_[g], p);
  MOE_CHECK(values.defined(), "the gradient of '", p.name, "' is not open on this rank: under ZeRO-2/3 a module's ",
            "gradients exist from its backward until they are reduce-scattered (DistributedOptimizer::open_grads)");
  return values;
}

Tensor ParamStore::view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const {
  MOE_CHECK(allocated_, "parameters used before allocation");
  const ParamInfo& p = info(id);
  return buffers[static_cast<int>(p.group)].rows(p.offset, p.offset + p.numel()).view(p.shape);
}

void ParamStore::initialize(uint64_t seed, int num_threads) {
  MOE_CHECK(allocated_, "parameters initialised before allocation");
  const DType dtype = master_dtype();
  ProgressDisplay progress;
  int64_t done = 0;
  for (size_t i = 0; i < infos_.size(); ++i) {
    const auto id = static_cast<ParamId>(i);
    const ParamInfo& p = infos_[i];
    if (progress.due()) {
      progress.show(fmt::format("init: {:.0f}% of this rank's parameters ({} of {} tensors, {:.0f} s)",
                                100.0 * static_cast<double>(done) / static_cast<double>(std::max<int64_t>(total_numel(), 1)),
                                i, infos_.size(), progress.seconds()));
    }
    done += p.numel();
    // Each element is a pure function of (seed, name, index in the whole parameter): a shard
    // evaluates its own elements only, and under ZeRO-3 (master and compute copy sharded) only
    // the flat range this rank keeps. Everything else needs the whole local parameter.
    const ShardState& s = shard_[static_cast<int>(p.group)];
    FlatRange local{0, p.numel()};
    if (s.master && s.params && p.kind != ParamKind::buffer) {
      const FlatRange part = intersect(range(id), s.range);
      local = part.empty() ? FlatRange{0, 0} : FlatRange{part.begin - p.offset, part.end - p.offset};
    }
    Tensor values = Tensor::empty({local.numel()}, dtype);
    if (dtype == DType::f64) {
      init_local_values(p, seed, local.begin, local.end, values.data_as<double>(), num_threads);
    } else {
      init_local_values(p, seed, local.begin, local.end, values.data_as<float>(), num_threads);
    }
    if (local.numel() == p.numel()) {
      store_master(id, values.view(p.shape));
    } else if (!local.empty()) {
      store_master_shard_part(id, {p.offset + local.begin, p.offset + local.end}, values);
    }
  }
  progress.finish(fmt::format("init: {} tensors, {} elements on this rank in {:.2f} s", infos_.size(), total_numel(),
                              progress.seconds()),
                  log::Level::debug);
}

void ParamStore::zero_grads() {
  for (int g = 0; g < k_num_param_groups; ++g) {
    if (!grads_sharded_[g]) {
      zero_group_grads_but_first_write(static_cast<ParamGroup>(g));
      continue;
    }
    grad_shard_[g].zero_();
    for (Attached& a : attached_grads_[g]) a.values.zero_();
  }
}

void ParamStore::sync_params_from_master() {
  if (!separate_master_) return;
  for (int g = 0; g < k_num_param_groups; ++g) {
    const auto group = static_cast<ParamGroup>(g);
    Tensor target = compute_copy_of_master(group);
    ops::cast(master_shard(group), target);
  }
}

Tensor ParamStore::compute_copy_of_master(ParamGroup group) {
  MOE_CHECK(allocated_, "parameters used before allocation");
  if (!separate_master_) return {};
  const int g = static_cast<int>(group);
  if (!shard_[g].master) return params_[g];
  if (shard_[g].params) return param_shard_[g];
  return params_[g].rows(shard_[g].range.begin, shard_[g].range.end);
}

Tensor ParamStore::master_to_host_f32(ParamId id) const {
  Tensor m = master(id);
  auto values = m.to_vector<float>();
  return Tensor::from_vector(values, m.shape(), DType::f32);
}

void ParamStore::refresh_from_master(ParamId id) {
  const ParamInfo& p = info(id);
  const int g = static_cast<int>(p.group);
  const ShardState& s = shard_[g];
  const Tensor values = master(id);
  if (!s.master) {
    if (separate_master_) {
      Tensor compute = param(id);
      ops::cast(values, compute);
    }
    return;
  }
  MOE_CHECK(p.kind == ParamKind::buffer, "refresh_from_master: the master of '", p.name,
            "' is sharded over ranks (ZeRO); only buffers keep a full master copy on every rank");
  const FlatRange full = range(id), part = intersect(full, s.range);
  if (!part.empty()) {
    const Tensor own = values.view({p.numel()}).rows(part.begin - full.begin, part.end - full.begin);
    Tensor target = master_shard_[g].rows(part.begin - s.range.begin, part.end - s.range.begin);
    ops::cast(own, target);
    if (s.params && separate_master_) {
      Tensor compute = param_shard_[g].rows(part.begin - s.range.begin, part.end - s.range.begin);
      ops::cast(own, compute);
    }
  }
  if (!s.params) {  // the full compute copy (separate from the sharded master)
    Tensor compute = view(params_, id);
    ops::cast(values, compute);
  }
}

void ParamStore::load_master_from_host(ParamId id, const Tensor& host_values) {
  const ParamInfo& p = info(id);
  MOE_CHECK(host_values.shape() == p.shape, "parameter '", p.name, "' has shape ", shape_str(p.shape),
            ", loaded values have ", shape_str(host_values.shape()));
  // Convert on the host to the master dtype, then copy to the device.
  Tensor converted;
  if (master_dtype() == DType::f64) {
    converted = Tensor::from_vector(host_values.to_vector<double>(), p.shape, DType::f64);
  } else {
    converted = Tensor::from_vector(host_values.to_vector<float>(), p.shape, DType::f32);
  }
  store_master(id, converted);
}

void ParamStore::store_master(ParamId id, const Tensor& converted) {
  const ParamInfo& p = info(id);
  const ShardState& s = shard_[static_cast<int>(p.group)];
  if (!s.master) {
    Tensor target = master(id);
    target.copy_from(converted);
    if (separate_master_) {
      Tensor compute = param(id);
      ops::cast(target, compute);
    }
    return;
  }
  // Sharded: every rank passes the full values and keeps its part.
  if (p.kind == ParamKind::buffer) buffer_master_.at(id).copy_from(converted);
  FlatRange full = range(id), part = intersect(full, s.range);
  if (!part.empty()) {
    store_master_shard_part(id, part, converted.view({p.numel()}).rows(part.begin - full.begin, part.end - full.begin));
  }
  if (!s.params) {  // the full compute copy (separate from the sharded master)
    Tensor compute = view(params_, id);
    ops::cast(converted.to(device_), compute);
  }
}

void ParamStore::store_master_shard_part(ParamId id, FlatRange part, const Tensor& values) {
  const int g = static_cast<int>(info(id).group);
  const ShardState& s = shard_[g];
  MOE_CHECK(s.master && s.range.contains(part) && range(id).contains(part) && values.numel() == part.numel(),
            "parameter '", info(id).name, "': flat range [", part.begin, ",", part.end, ") is not in this rank's shard");
  Tensor target = master_shard_[g].rows(part.begin - s.range.begin, part.end - s.range.begin);
  target.copy_from(values);
  if (s.params && separate_master_) {
    Tensor compute = param_shard_[g].rows(part.begin - s.range.begin, part.end - s.range.begin);
    ops::cast(target, compute);
  }
}

}  // namespace moe

// ZeRO-0/1/2/3 over flat parameter buffers: bucketed all-reduce or reduce-scatter of the
// gradients, the global norm, AdamW on the local shard, all-gather / per-unit gather of weights.
#include "src/train/distributed_optimizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <set>

#include "parallel/grad_sync.h"
#include "src/ops/ops.h"
#include "src/train/optimizer.h"

namespace moe {

namespace {

const char* group_name(ParamGroup g) { return g == ParamGroup::dense ? "dense" : "expert"; }

// dst <- src, same dtype and device, stream-ordered (Tensor::copy_from waits for the copy on
// CUDA; a same-dtype cast is an asynchronous device copy).
void copy_elements(const Tensor& src, Tensor dst) {
  if (src.numel() > 0) ops::cast(src, dst);
}

// x *= alpha. ops::scale takes a float factor, which is inexact for f64 (1/3 as a float is off
// by 3e-8): f64 tensors live on the CPU and are scaled in double here.
void scale_exact(Tensor x, double alpha) {
  if (x.numel() == 0) return;
  if (x.dtype() == DType::f64 && !x.is_cuda()) {
    double* data = x.data_as<double>();
    for (int64_t i = 0; i < x.numel(); ++i) data[i] *= alpha;
    return;
  }
  ops::scale(x, static_cast<float>(alpha));
}

// Flat elements r of `flat` (an empty view for an empty range, wherever it points).
Tensor rows_of(const Tensor& flat, FlatRange r) { return r.empty() ? flat.rows(0, 0) : flat.rows(r.begin, r.end); }
// Flat elements r of `local`, which holds the elements from `origin` on.
Tensor rows_at(const Tensor& local, int64_t origin, FlatRange r) {
  return r.empty() ? local.rows(0, 0) : local.rows(r.begin - origin, r.end - origin);
}

std::string unit_of(const std::string& name) {
  size_t dot = name.find('.');
  if (dot == std::string::npos) return name;
  if (name.compare(0, dot, "layers") == 0) return name.substr(0, name.find('.', dot + 1));
  return name.substr(0, dot);
}

}  // namespace

std::vector<ParamUnit> param_units(const ParamStore& store) {
  std::vector<ParamUnit> units;
  std::vector<std::array<int64_t, k_num_param_groups>> counted;
  std::set<std::string> seen;
  for (const ParamInfo& p : store.infos()) {
    std::string key = unit_of(p.name);
    if (units.empty() || units.back().name != key) {
      MOE_CHECK(seen.insert(key).second, "the parameters of '", key, "' are not registered together (",
                p.name, " comes after another unit's)");
      units.push_back({key, {}});
      counted.push_back({0, 0});
    }
    int g = static_cast<int>(p.group);
    FlatRange& r = units.back().range[g];
    FlatRange pr{p.offset, p.offset + p.numel()};
    r = counted.back()[g] == 0 ? pr : FlatRange{std::min(r.begin, pr.begin), std::max(r.end, pr.end)};
    counted.back()[g] += p.numel();
  }
  for (size_t u = 0; u < units.size(); ++u) {
    for (int g = 0; g < k_num_param_groups; ++g) {
      MOE_CHECK(units[u].range[g].numel() == counted[u][g], "the parameters of '", units[u].name,
                "' are not contiguous in the ", group_name(static_cast<ParamGroup>(g)), " flat buffer");
    }
  }
  return units;
}

FlatRange DistributedOptimizer::Layout::owned_by(int r) const {
  if (!sharded) return {0, numel};
  return {std::min(r * shard, numel), std::min((r + 1) * shard, numel)};
}

DistributedOptimizer::DistributedOptimizer(ParamStore& store, const OptimConfig& config, int zero_stage,
                                           Communicator& dense_group, Communicator& expert_group, double bucket_mb)
    : store_(&store), config_(config), stage_(zero_stage) {
  MOE_CHECK(zero_stage >= 0 && zero_stage <= 3, "ZeRO stage must be 0, 1, 2 or 3, got ", zero_stage);
  MOE_CHECK(bucket_mb > 0, "the gradient bucket size must be positive, got ", bucket_mb, " MiB");
  MOE_CHECK(store.flat_grads(ParamGroup::dense).defined(), "DistributedOptimizer needs allocated parameters");
  MOE_CHECK(dense_group.size() % expert_group.size() == 0, "the expert-data-parallel group (", expert_group.size(),
            " ranks) must divide the data-parallel group (", dense_group.size(), " ranks)");
  bucket_bytes_ = std::max<size_t>(1, static_cast<size_t>(bucket_mb * 1024.0 * 1024.0));
  for (int i = 0; i < k_num_param_groups; ++i) {
    auto g = static_cast<ParamGroup>(i);
    Communicator& comm = g == ParamGroup::dense ? dense_group : expert_group;
    MOE_CHECK(comm.device() == store.device(), "the ", group_name(g), " group's communicator moves ",
              comm.device().str(), " tensors but the parameters are on ", store.device().str());
    Layout& l = layouts_[i];
    l.comm = &comm;
    l.numel = store.group_numel(g);
    l.size = comm.size();
    l.rank = comm.rank();
    l.sharded = stage_ >= 1;
    l.shard = l.sharded ? (l.numel + l.size - 1) / l.size : l.numel;
    l.own = l.owned_by(l.rank);
    if (l.sharded) store.shard(g, l.own, stage_ == 3);
    m_[i] = Tensor::zeros({l.own.numel()}, store.master_dtype(), store.device());
    v_[i] = Tensor::zeros({l.own.numel()}, store.master_dtype(), store.device());
    update_[i] = AdamWUpdate(store, config, g, l.own);
  }
  norm_sq_ = Tensor::zeros({k_num_param_groups}, DType::f64, store.device());
  clip_scale_ = Tensor::zeros({1}, DType::f32, store.device());
}

bool DistributedOptimizer::decays(const ParamInfo& p) const { return adamw_decays(p, config_); }

int64_t DistributedOptimizer::bucket_numel(DType dtype) const {
  return std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes_ / dtype_size(dtype)));
}

void DistributedOptimizer::scale_expert_grads(FlatRange range) {
  if (expert_grad_scale_ == 1.0f || range.empty()) return;
  Tensor grads = store_->flat_grads(ParamGroup::expert).rows(range.begin, range.end);
  ops::scale(grads, expert_grad_scale_);
}

void DistributedOptimizer::reduce_unit_async(const ParamUnit& unit) {
  if (stage_ >= 2) return;
  for (int i = 0; i < k_num_param_groups; ++i) {
    const FlatRange range = unit.range[i];
    if (range.empty()) continue;
    if (i == static_cast<int>(ParamGroup::expert)) scale_expert_grads(range);
    reduced_[i].push_back(range);
    const Layout& l = layouts_[i];
    if (l.size == 1) continue;
    Tensor grads = store_->flat_grads(static_cast<ParamGroup>(i)).rows(range.begin, range.end);
    l.comm->all_reduce_avg_async(grads);
  }
}

void DistributedOptimizer::reduce_gradients() {
  if (gradients_sharded()) {
    // Every block's gradients were reduced into the shards as its backward ended;
    // what is still open (modules whose gradients live through the step) goes now, in order.
    for (int i = 0; i < k_num_param_groups; ++i) {
      while (!open_[i].empty()) {
        ParamUnit unit{"open", {}};
        unit.range[i] = open_[i].front();
        reduce_unit_grads(unit);
      }
    }
    return;
  }
  for (int i = 0; i < k_num_param_groups; ++i) {
    const Layout& l = layouts_[i];
    auto& done = reduced_[i];
    std::sort(done.begin(), done.end(), [](FlatRange a, FlatRange b) { return a.begin < b.begin; });
    // The ranges no unit reduced yet, in order.
    std::vector<FlatRange> rest;
    int64_t at = 0;
    for (FlatRange r : done) {
      if (r.begin > at) rest.push_back({at, r.begin});
      at = std::max(at, r.end);
    }
    if (at < l.numel) rest.push_back({at, l.numel});
    if (i == static_cast<int>(ParamGroup::expert)) {
      for (FlatRange r : rest) scale_expert_grads(r);
    }
    done.clear();
    if (l.size == 1 || l.numel == 0) continue;
    if (stage_ <= 1) {
      for (FlatRange r : rest) {
        Tensor grads = store_->flat_grads(static_cast<ParamGroup>(i)).rows(r.begin, r.end);
        average_gradients(*l.comm, grads, bucket_bytes_);
      }
      l.comm->wait_async();
    } else {
      reduce_scatter_avg(static_cast<ParamGroup>(i));
    }
  }
}

// Round k reduces chunk k (c elements) of every rank's range: the chunks are packed rank by
// rank into a staging buffer (zero past n) and reduce-scattered into this rank's slot, which
// goes back to its place in the flat buffer. One round over an evenly divisible buffer needs
// no staging: the flat buffer is already rank-major.
void DistributedOptimizer::reduce_scatter_avg(ParamGroup g) {
  const Layout& l = layout(g);
  Tensor flat = store_->flat_grads(g);
  const int64_t n = l.numel, s = l.shard, c = std::max<int64_t>(1, bucket_numel(flat.dtype()) / l.size);
  if (s * l.size == n && s <= c) {
    Tensor own = flat.rows(l.rank * s, (l.rank + 1) * s);
    l.comm->reduce_scatter_sum(flat, own);
  } else {
    Tensor staging = Tensor::empty({l.size * std::min(c, s)}, flat.dtype(), flat.device());
    for (int64_t k0 = 0; k0 < s; k0 += c) {
      const int64_t len = std::min(c, s - k0);
      Tensor window = staging.rows(0, l.size * len);
      for (int q = 0; q < l.size; ++q) {
        FlatRange src = intersect({q * s + k0, q * s + k0 + len}, {0, n});
        Tensor slot = window.rows(q * len, (q + 1) * len);
        if (src.numel() < len) slot.rows(src.numel(), len).zero_();
        copy_elements(rows_of(flat, src), slot.rows(0, src.numel()));
      }
      Tensor mine = window.rows(l.rank * len, (l.rank + 1) * len);
      l.comm->reduce_scatter_sum(window, mine);
      FlatRange dst = intersect({l.rank * s + k0, l.rank * s + k0 + len}, {0, n});
      copy_elements(mine.rows(0, dst.numel()), rows_of(flat, dst));
    }
  }
  scale_exact(rows_of(flat, l.own), 1.0 / l.size);
}

void DistributedOptimizer::shard_gradients() {
  MOE_CHECK(stage_ >= 2, "sharded gradients need ZeRO stage 2 or 3, not ", stage_);
  for (int i = 0; i < k_num_param_groups; ++i) {
    const auto g = static_cast<ParamGroup>(i);
    if (!store_->grads_sharded(g)) store_->shard_grads(g, layouts_[i].own);
  }
}

bool DistributedOptimizer::gradients_sharded() const { return store_->grads_sharded(ParamGroup::dense); }

void DistributedOptimizer::open_grads(const ParamUnit& unit) {
  if (!gradients_sharded()) return;
  for (int i = 0; i < k_num_param_groups; ++i) {
    const auto g = static_cast<ParamGroup>(i);
    const FlatRange range = unit.range[i];
    if (range.empty() || store_->attached_grads(g, range).defined()) continue;
    store_->attach_grads(g, range, Tensor::zeros({range.numel()}, store_->master_dtype(), store_->device()));
    open_[i].push_back(range);
  }
}

void DistributedOptimizer::reduce_unit_grads(const ParamUnit& unit) {
  if (!gradients_sharded()) return;
  for (int i = 0; i < k_num_param_groups; ++i) {
    const auto g = static_cast<ParamGroup>(i);
    const FlatRange range = unit.range[i];
    auto it = std::find(open_[i].begin(), open_[i].end(), range);
    if (range.empty() || it == open_[i].end()) continue;
    open_[i].erase(it);
    Tensor values = store_->attached_grads(g, range);
    if (g == ParamGroup::expert && expert_grad_scale_ != 1.0f) ops::scale(values, expert_grad_scale_);
    // Shards are contiguous ranges of the flat buffer, so each bucket of the module is cut at
    // the shard borders and reduce-scattered in parts of unequal (or no) length: this rank
    // receives the sum of its part only, half the bytes of an all-reduce.
    const Layout& l = layouts_[i];
    const FlatRange part = intersect(range, l.own);
    Tensor mine = rows_at(values, range.begin, part);
    if (l.size > 1) {
      std::vector<int64_t> borders(static_cast<size_t>(l.size) + 1);
      for (int r = 0; r < l.size; ++r) borders[static_cast<size_t>(r)] = l.owned_by(r).begin;
      borders.back() = l.numel;
      reduce_scatter_sharded(*l.comm, values, range.begin, borders, bucket_bytes_);
      scale_exact(mine, 1.0 / l.size);
    }
    Tensor shard = store_->grad_shard(g);
    Tensor target = rows_at(shard, l.own.begin, part);
    if (!part.empty()) ops::accumulate(target, mine);
    store_->detach_grads(g, range);  // the module's gradient buffer is freed with its last view
  }
}

// The mirror of reduce_scatter_avg on the compute copy: round k all-gathers chunk k of every
// rank's range through the staging buffer.
void DistributedOptimizer::all_gather_params(ParamGroup g) {
  const Layout& l = layout(g);
  Tensor flat = store_->flat_params(g);
  const int64_t n = l.numel, s = l.shard, c = std::max<int64_t>(1, bucket_numel(flat.dtype()) / l.size);
  if (s * l.size == n && s <= c) {
    Tensor own = flat.rows(l.rank * s, (l.rank + 1) * s);
    l.comm->all_gather(own, flat);
    return;
  }
  Tensor staging = Tensor::empty({l.size * std::min(c, s)}, flat.dtype(), flat.device());
  for (int64_t k0 = 0; k0 < s; k0 += c) {
    const int64_t len = std::min(c, s - k0);
    Tensor window = staging.rows(0, l.size * len);
    Tensor mine = window.rows(l.rank * len, (l.rank + 1) * len);
    FlatRange src = intersect({l.rank * s + k0, l.rank * s + k0 + len}, {0, n});
    copy_elements(rows_of(flat, src), mine.rows(0, src.numel()));  // the tail past n is never read
    l.comm->all_gather(mine, window);
    for (int q = 0; q < l.size; ++q) {
      if (q == l.rank) continue;
      FlatRange dst = intersect({q * s + k0, q * s + k0 + len}, {0, n});
      copy_elements(window.rows(q * len, q * len + dst.numel()), rows_of(flat, dst));
    }
  }
}

void DistributedOptimizer::set_model_parallel_norm(Communicator* group, std::vector<double> weights) {
  MOE_CHECK(weights.size() == store_->infos().size(), "set_model_parallel_norm: ", weights.size(),
            " weights for ", store_->infos().size(), " parameters");
  model_parallel_ = group;
  norm_weights_ = std::move(weights);
}

// acc f64[1] (device) += sum of squares of `held` (flat elements held_range of group g), each
// parameter's part weighted; runs of neighbours with the same weight are summed at once.
void DistributedOptimizer::weighted_sum_squares(ParamGroup g, const Tensor& held, FlatRange held_range,
                                                Tensor acc) const {
  if (held.numel() == 0) return;
  if (norm_weights_.empty()) {
    ops::sum_squares_accumulate(held, acc);
    return;
  }
  FlatRange run;
  double run_weight = -1;
  auto flush = [&] {
    if (!run.empty() && run_weight != 0) ops::sum_squares_accumulate(rows_at(held, held_range.begin, run), acc, run_weight);
  };
  for (size_t i = 0; i < store_->infos().size(); ++i) {
    const ParamInfo& p = store_->infos()[i];
    if (p.group != g) continue;
    FlatRange part = intersect(store_->range(static_cast<ParamId>(i)), held_range);
    if (part.empty()) continue;
    if (norm_weights_[i] == run_weight && run.end == part.begin) {
      run.end = part.end;
      continue;
    }
    flush();
    run = part;
    run_weight = norm_weights_[i];
  }
  flush();
}

void DistributedOptimizer::clip_grads(double max_norm) {
  norm_sq_.zero_();
  for (int i = 0; i < k_num_param_groups; ++i) {
    const auto g = static_cast<ParamGroup>(i);
    const Tensor held = stage_ >= 2 ? store_->grad_shard(g) : store_->flat_grads(g);
    const FlatRange range = stage_ >= 2 ? layouts_[i].own : FlatRange{0, held.numel()};
    weighted_sum_squares(g, held, range, norm_sq_.rows(i, i + 1));
  }
  const Layout& dense = layouts_[0];
  const Layout& expert = layouts_[1];
  if (!norm_stays_on_device()) {
    // Sums over ranks go through the host in double (one wait), then back to the device.
    const std::vector<double> sum_sq = norm_sq_.to_vector<double>();
    double total = 0;
    if (stage_ >= 2) {
      // Shards partition each group's parameters; summing over the DP group covers every dense
      // shard once and every expert shard of every EP rank once.
      std::vector<double> partial{sum_sq[0] + sum_sq[1]};
      if (dense.size > 1) dense.comm->all_reduce_sum(partial);
      total = partial[0];
    } else if (!expert_parallel()) {
      total = sum_sq[0] + sum_sq[1];
    } else {
      // Expert gradients are replicated over the expert-DP group: its first rank speaks for it.
      std::vector<double> partial{expert.rank == 0 ? sum_sq[1] : 0.0};
      dense.comm->all_reduce_sum(partial);
      total = sum_sq[0] + partial[0];
    }
    if (model_parallel()) {
      std::vector<double> replica{total};
      model_parallel_->all_reduce_sum(replica);
      total = replica[0];
    }
    norm_sq_.copy_from(Tensor::from_vector(std::vector<double>{total, 0.0}, {k_num_param_groups}, DType::f64));
  }
  ops::clip_scale(norm_sq_, max_norm, clip_scale_);
  clip_pending_ = true;
}

bool DistributedOptimizer::norm_stays_on_device() const {
  // Full, identical gradients on every rank (stage 0/1 without EP) or one rank's shards: the
  // norm is this rank's sums.
  return (stage_ >= 2 ? layouts_[0].size == 1 : !expert_parallel()) && !model_parallel();
}

// With expert parallelism the DP group holds ep different sets of experts.
bool DistributedOptimizer::expert_parallel() const { return layouts_[1].size != layouts_[0].size; }

bool DistributedOptimizer::model_parallel() const { return model_parallel_ != nullptr && model_parallel_->size() > 1; }

double DistributedOptimizer::grad_norm() const {
  const std::vector<double> sum_sq = norm_sq_.to_vector<double>();
  return std::sqrt(sum_sq[0] + sum_sq[1]);
}

void DistributedOptimizer::cancel_update() {
  MOE_CHECK(clip_pending_, "cancel_update: clip_grads has not run since the last step");
  clip_scale_.copy_from(
      Tensor::from_vector(std::vector<float>{std::numeric_limits<float>::quiet_NaN()}, {1}, DType::f32));
}

double DistributedOptimizer::clip_grad_norm(double max_norm) {
  clip_grads(max_norm);
  return grad_norm();
}

void DistributedOptimizer::step(double lr, int64_t step) {
  for (int i = 0; i < k_num_param_groups; ++i) {
    MOE_CHECK(gathered_[i].empty(), "step: ", gathered_[i].size(), " gathered ", group_name(static_cast<ParamGroup>(i)),
              " parameter range(s) are still in use (ZeRO-3: release every gathered range before the update)");
  }
  for (int i = 0; i < k_num_param_groups; ++i) {
    auto g = static_cast<ParamGroup>(i);
    // The compute copy of this rank's range (the whole at stage 0) is written in the same pass.
    update_[i].apply(store_->master_shard(g), store_->grad_shard(g), m_[i], v_[i], lr, step,
                     clip_pending_ ? clip_scale_ : Tensor{}, store_->compute_copy_of_master(g));
  }
  clip_pending_ = false;
  if (stage_ == 1 || stage_ == 2) {
    for (int i = 0; i < k_num_param_groups; ++i) {
      if (layouts_[i].size > 1 && layouts_[i].numel > 0) all_gather_params(static_cast<ParamGroup>(i));
    }
  }
}

void DistributedOptimizer::prepare_unit_steps(const std::vector<ParamUnit>& units) {
  MOE_CHECK(stage_ == 0, "the update by unit needs parallel.zero = 0 (got ", stage_, ")");
  unit_updates_.clear();
  int64_t covered[k_num_param_groups] = {};
  for (const ParamUnit& u : units) {
    UnitUpdate& uu = unit_updates_.emplace_back();
    uu.unit = u;
    for (int i = 0; i < k_num_param_groups; ++i) {
      uu.update[i] = AdamWUpdate(*store_, config_, static_cast<ParamGroup>(i), u.range[i]);
      covered[i] += u.range[i].numel();
    }
  }
  for (int i = 0; i < k_num_param_groups; ++i) {
    const int64_t n = store_->group_numel(static_cast<ParamGroup>(i));
    MOE_CHECK(covered[i] == n, "the update by unit: the units cover ", covered[i], " of the ",
              group_name(static_cast<ParamGroup>(i)), " group's ", n, " elements");
  }
}

void DistributedOptimizer::step_by_unit(double lr, int64_t step,
                                        const std::function<void(const ParamUnit&)>& after) {
  MOE_CHECK(stage_ == 0 && !unit_updates_.empty(), "step_by_unit: prepare_unit_steps first (parallel.zero = 0)");
  for (const UnitUpdate& uu : unit_updates_) {
    for (int i = 0; i < k_num_param_groups; ++i) {
      const FlatRange r = uu.unit.range[i];
      if (r.empty()) continue;
      const auto g = static_cast<ParamGroup>(i);
      const Tensor compute = store_->compute_copy_of_master(g);
      uu.update[i].apply(store_->master_shard(g).rows(r.begin, r.end), store_->grad_shard(g).rows(r.begin, r.end),
                         m_[i].rows(r.begin, r.end), v_[i].rows(r.begin, r.end), lr, step,
                         clip_pending_ ? clip_scale_ : Tensor{},
                         compute.defined() ? compute.rows(r.begin, r.end) : Tensor{});
    }
    after(uu.unit);
  }
  clip_pending_ = false;
}

// Each rank broadcasts the part of `range` that lies in its own range: a block's parameters
// usually sit in one or two ranks' ranges, so a gather is a few broadcasts of its size.
void DistributedOptimizer::gather_range(ParamGroup g, const Tensor& local, FlatRange range, Tensor& out) {
  const Layout& l = layout(g);
  MOE_CHECK(out.numel() == range.numel(), "gather_range: output of ", out.numel(), " elements for ", range.numel());
  for (int q = 0; q < (l.sharded ? l.size : 1); ++q) {
    FlatRange part = intersect(l.owned_by(q), range);
    if (part.empty()) continue;
    Tensor piece = rows_at(out, range.begin, part);
    if (!l.sharded || q == l.rank) copy_elements(rows_at(local, l.own.begin, part), piece);
    if (l.sharded && l.size > 1) l.comm->broadcast(piece, q);
  }
}

void DistributedOptimizer::gather(ParamGroup g, FlatRange range) {
  if (stage_ < 3 || range.empty()) return;
  const Layout& l = layout(g);
  MOE_CHECK(range.begin >= 0 && range.end <= l.numel, "gather: range [", range.begin, ",", range.end,
            ") is outside the ", group_name(g), " group's ", l.numel, " elements");
  int& count = gathered_[static_cast<int>(g)][{range.begin, range.end}];
  if (count++ > 0) return;
  Tensor values = Tensor::empty({range.numel()}, store_->compute_dtype(), store_->device());
  gather_range(g, store_->param_shard(g), range, values);
  store_->attach_params(g, range, values);
}

void DistributedOptimizer::release(ParamGroup g, FlatRange range) {
  if (stage_ < 3 || range.empty()) return;
  auto& counts = gathered_[static_cast<int>(g)];
  auto it = counts.find({range.begin, range.end});
  MOE_CHECK(it != counts.end(), "release: the ", group_name(g), " range [", range.begin, ",", range.end,
            ") is not gathered");
  if (--it->second > 0) return;
  counts.erase(it);
  store_->detach_params(g, range);  // the gathered copy is freed with its last view
}

void DistributedOptimizer::gather(const ParamUnit& unit) {
  for (int i = 0; i < k_num_param_groups; ++i) gather(static_cast<ParamGroup>(i), unit.range[i]);
}

void DistributedOptimizer::release(const ParamUnit& unit) {
  for (int i = 0; i < k_num_param_groups; ++i) release(static_cast<ParamGroup>(i), unit.range[i]);
}

ParamUnit DistributedOptimizer::all_params() const {
  ParamUnit unit{"all", {}};
  for (int i = 0; i < k_num_param_groups; ++i) unit.range[i] = {0, layouts_[i].numel};
  return unit;
}

Tensor DistributedOptimizer::full_state(ParamId id, const Tensor& local) {
  const ParamInfo& p = store_->info(id);
  Tensor out = Tensor::empty({p.numel()}, local.dtype(), local.device());
  gather_range(p.group, local, store_->range(id), out);
  return out.to(Device::cpu()).view(p.shape);
}

Tensor DistributedOptimizer::full_master(ParamId id) {
  const ParamInfo& p = store_->info(id);
  if (!store_->master_sharded(p.group) || p.kind == ParamKind::buffer) return store_->master(id).to(Device::cpu());
  return full_state(id, store_->master_shard(p.group));
}

Tensor DistributedOptimizer::full_moment1(ParamId id) {
  return full_state(id, m_[static_cast<int>(store_->info(id).group)]);
}

Tensor DistributedOptimizer::full_moment2(ParamId id) {
  return full_state(id, v_[static_cast<int>(store_->info(id).group)]);
}

void DistributedOptimizer::load_full_moments(ParamId id, const Tensor& moment1, const Tensor& moment2) {
  const ParamInfo& p = store_->info(id);
  const int g = static_cast<int>(p.group);
  const FlatRange full = store_->range(id), part = intersect(full, layouts_[g].own);
  const Tensor* values[2] = {&moment1, &moment2};
  Tensor* targets[2] = {&m_[g], &v_[g]};
  for (int k = 0; k < 2; ++k) {
    MOE_CHECK(values[k]->shape() == p.shape, "optimizer state of '", p.name, "' has shape ", shape_str(p.shape),
              ", loaded values have ", shape_str(values[k]->shape()));
    if (part.empty()) continue;
    Tensor host = store_->master_dtype() == DType::f64
                      ? Tensor::from_vector(values[k]->to_vector<double>(), {p.numel()}, DType::f64)
                      : Tensor::from_vector(values[k]->to_vector<float>(), {p.numel()}, DType::f32);
    Tensor target = rows_at(*targets[k], layouts_[g].own.begin, part);
    target.copy_from(rows_at(host, full.begin, part));
  }
}

}  // namespace moe

// ZeRO-0/1/2/3 under mpirun: DistributedOptimizer on N ranks, each with its own batch, against a
// one-process reference that averages every rank's gradients by hand, then clips and runs AdamW.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/model/model.h"
#include "src/ops/ops.h"
#include "src/train/distributed_optimizer.h"
#include "src/train/optimizer.h"
#include "tests/test_util.h"

using namespace moe;

namespace {

constexpr ParamGroup k_groups[] = {ParamGroup::dense, ParamGroup::expert};

Tensor host_tensor(const std::vector<double>& values, const Shape& shape, DType dtype) {
  if (dtype == DType::f64) return Tensor::from_vector(values, shape, dtype);
  return Tensor::from_vector(std::vector<float>(values.begin(), values.end()), shape, dtype);  // f32 or bf16
}

void set_values(Tensor target, const std::vector<double>& values) {
  target.copy_from(host_tensor(values, target.shape(), target.dtype()));
}

std::vector<double> slice(const std::vector<double>& v, FlatRange r) {
  return {v.begin() + r.begin, v.begin() + r.end};
}

// The same value on every rank of the group, bit for bit.
void require_same_on_all_ranks(Communicator& comm, double value) {
  std::vector<double> extremes{value, -value};
  comm.all_reduce_max(extremes);
  REQUIRE(extremes[0] == value);
  REQUIRE(-extremes[1] == value);
}

// Memory: at stage >= 1 a rank holds moments for its range only, 1/N of the group rounded up,
// and the ranges of the group partition the flat buffer.
void check_sharded_state(DistributedOptimizer& opt, ParamStore& store, int stage) {
  for (ParamGroup g : k_groups) {
    Communicator& comm = opt.comm(g);
    int64_t n = store.group_numel(g);
    FlatRange own = opt.shard_range(g);
    REQUIRE(opt.moment1(g).numel() == own.numel());
    REQUIRE(opt.moment2(g).numel() == own.numel());
    if (stage == 0) {
      REQUIRE(own == FlatRange{0, n});
      continue;
    }
    int64_t per_rank = (n + comm.size() - 1) / comm.size();
    REQUIRE(own.begin == std::min<int64_t>(comm.rank() * per_rank, n));
    REQUIRE(own.numel() <= per_rank);
    std::vector<double> total{static_cast<double>(opt.moment1(g).numel())};
    comm.all_reduce_sum(total);
    REQUIRE(total[0] == static_cast<double>(n));
    if (stage == 3) {
      REQUIRE(store.params_sharded(g));
      REQUIRE(store.param_shard(g).numel() == own.numel());
      REQUIRE(store.master_shard(g).numel() == own.numel());
      REQUIRE_THROWS_WITH(store.flat_params(g), Catch::Contains("sharded over ranks (ZeRO-3)"));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A tiny MoE model, each rank with its own batch.

Config tiny_config(double max_norm) {
  Config c;
  c.model.vocab_size = 32;
  c.model.d_model = 16;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 8;
  c.model.d_ff = 24;
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.d_expert = 12;
  c.moe.first_dense = 1;
  c.moe.expert_bias_rate = 1e-3;  // adds a buffer (never trained) to the dense group
  c.optim.lr = 1e-2;
  c.optim.weight_decay = 0.1;     // decays weights only: norms and embeddings are other kinds
  c.optim.grad_clip = max_norm;
  return c;
}

Batch rank_batch(const ModelConfig& m, int rank, int step) {
  const int64_t rows = 2, n = rows * m.seq_len;
  uint64_t seed = 1000u * static_cast<uint64_t>(step) + 17u * static_cast<uint64_t>(rank) + 3u;
  return make_batch(test::random_ids(n, m.vocab_size, seed).to_vector<int32_t>(),
                    test::random_ids(n, m.vocab_size, seed + 500).to_vector<int32_t>(), rows, Device::cpu());
}

// Accumulates the gradients of this batch's mean token loss (plus the balancing loss).
void backprop(Model& model, const Batch& b) {
  ModelSaved saved;
  model.forward(b, saved);
  model.backward(b, saved, 1.0f / static_cast<float>(b.batch_size * model.config().seq_len), 1.0f);
}

// Aux-loss-free bias updates (the trainer's, with made-up loads): the buffer changes every step
// and must reach the forward pass at every stage.
void update_biases(Model& model, int step) {
  std::vector<std::vector<int64_t>> loads(static_cast<size_t>(model.num_moe_layers()),
                                          std::vector<int64_t>{step, 3, 0, 2 * step});
  model.update_expert_biases(loads, 1e-3);
}

struct Tolerances {
  double grad_atol, grad_rtol, weight_atol, weight_rtol, norm_eps;
};

// The distributed sums are the reference's sums in another order (MPI's reduction order in the
// working dtype vs the host's double sum rounded once), i.e. a few ulp of the summands per
// gradient: f64 ~1e-16 and f32 ~1e-7 relative (gradients whose terms cancel lose more, hence
// 1e-4 relative with a 1e-6 floor for f32). The weights go through five AdamW steps, where
// m/sqrt(v) turns a relative error of the gradient into the same relative error of the update
// (lr = 1e-2) and near-cancelling gradients amplify it, hence the data-parallel trainer test's
// bounds for f32 (1e-5 absolute + 1e-4 relative) and 1e-10 + 1e-9 for f64. Measured on 4
// ranks: the worst element uses 5% (f32) and 6e-6 (f64) of these bounds; on 2 ranks the
// averages of two values are exact and the weights match bit for bit.
Tolerances tolerances(DType dtype) {
  if (dtype == DType::f64) return {1e-13, 1e-10, 1e-10, 1e-9, 1e-12};
  return {1e-6, 1e-4, 1e-5, 1e-4, 1e-5};
}

struct RunResult {
  std::vector<double> norms;
  int clipped = 0;
};

// Five steps of the model under DistributedOptimizer(stage) against the reference, then a
// checkpoint of the full state loaded into a fresh model at `restore_stage` for a sixth step.
RunResult run_model_case(Communicator& world, DType dtype, int stage, double bucket_mb, int restore_stage) {
  const int ranks = world.size(), rank = world.rank();
  const double max_norm = 0.5, lr = 1e-2;
  const Tolerances tol = tolerances(dtype);
  Config c = tiny_config(max_norm);
  auto expert_comm = world.split(0, rank);  // the same ranks through another communicator object

  Model model(c.model, c.moe), ref(c.model, c.moe);
  for (Model* m : {&model, &ref}) {
    m->allocate(Device::cpu(), dtype);
    m->initialize(7);
  }
  DistributedOptimizer opt(model.params(), c.optim, stage, world, *expert_comm, bucket_mb);
  AdamW ref_opt(ref.params(), c.optim);
  ParamStore& store = model.params();
  ParamStore& ref_store = ref.params();
  check_sharded_state(opt, store, stage);
  const std::vector<ParamUnit> units = param_units(store);
  REQUIRE(units.size() == static_cast<size_t>(c.model.num_layers) + 2);  // embed, layers, final_norm (tied head)

  // One step of the reference (every rank's batch, averaged by hand) and of the distributed
  // run (this rank's batch); returns the reference's averaged gradients before clipping.
  auto step_both = [&](Model& dist, DistributedOptimizer& dopt, int t, RunResult* result) {
    std::vector<double> avg[k_num_param_groups];
    for (ParamGroup g : k_groups) avg[static_cast<int>(g)].assign(ref_store.group_numel(g), 0.0);
    for (int q = 0; q < ranks; ++q) {
      ref_store.zero_grads();
      backprop(ref, rank_batch(c.model, q, t));
      for (ParamGroup g : k_groups) {
        auto grads = ref_store.flat_grads(g).to_vector<double>();
        for (size_t i = 0; i < grads.size(); ++i) avg[static_cast<int>(g)][i] += grads[i] / ranks;
      }
    }
    for (ParamGroup g : k_groups) set_values(ref_store.flat_grads(g), avg[static_cast<int>(g)]);
    double ref_norm = clip_grad_norm(ref_store, max_norm);
    ref_opt.step(lr, t);
    update_biases(ref, t);

    ParamStore& ds = dist.params();
    ds.zero_grads();
    for (const ParamUnit& u : units) dopt.gather(u);  // ZeRO-3: every unit (no-ops below)
    backprop(dist, rank_batch(c.model, rank, t));
    for (const ParamUnit& u : units) dopt.release(u);
    std::vector<double> local[k_num_param_groups];
    for (ParamGroup g : k_groups) local[static_cast<int>(g)] = ds.flat_grads(g).to_vector<double>();
    dopt.reduce_gradients();
    for (ParamGroup g : k_groups) {
      int i = static_cast<int>(g);
      FlatRange own = dopt.shard_range(g);
      FlatRange reduced = dopt.zero_stage() >= 2 ? own : FlatRange{0, ds.group_numel(g)};
      auto got = ds.flat_grads(g).to_vector<double>();
      test::require_close(slice(got, reduced), slice(avg[i], reduced), tol.grad_atol, tol.grad_rtol,
                          "averaged gradients at step " + std::to_string(t));
      if (dopt.zero_stage() >= 2) {  // only the shard was reduced: the rest is untouched
        for (int64_t e = 0; e < ds.group_numel(g); ++e) {
          if (e < own.begin || e >= own.end) REQUIRE(got[e] == local[i][e]);
        }
      }
    }
    double norm = dopt.clip_grad_norm(max_norm);
    INFO("stage " << dopt.zero_stage() << " step " << t << " norm " << norm << " reference " << ref_norm);
    REQUIRE(norm == Approx(ref_norm).epsilon(tol.norm_eps));
    require_same_on_all_ranks(world, norm);
    dopt.step(lr, t);
    update_biases(dist, t);
    if (result) {
      result->norms.push_back(norm);
      result->clipped += norm > max_norm ? 1 : 0;
    }
  };

  RunResult result;
  for (int t = 1; t <= 5; ++t) step_both(model, opt, t, &result);

  // Full weights and moments assembled from the shards (the checkpoint path).
  const size_t num_params = store.infos().size();
  std::vector<Tensor> masters(num_params), m1(num_params), m2(num_params);
  for (size_t i = 0; i < num_params; ++i) {
    auto id = static_cast<ParamId>(i);
    const std::string& name = store.info(id).name;
    masters[i] = opt.full_master(id);
    m1[i] = opt.full_moment1(id);
    m2[i] = opt.full_moment2(id);
    REQUIRE(masters[i].shape() == store.info(id).shape);
    test::require_close(masters[i], ref_store.master(id), tol.weight_atol, tol.weight_rtol, name + " after 5 steps");
    test::require_close(m1[i], ref_opt.moment1(id), tol.weight_atol, tol.weight_rtol, name + " moment 1");
    test::require_close(m2[i], ref_opt.moment2(id), tol.weight_atol, tol.weight_rtol, name + " moment 2");
  }
  // Every rank holds the full compute parameters below stage 3, and gathers them at stage 3.
  for (const ParamUnit& u : units) opt.gather(u);
  for (size_t i = 0; i < num_params; ++i) {
    auto id = static_cast<ParamId>(i);
    test::require_close(store.param(id), ref_store.param(id), tol.weight_atol, tol.weight_rtol,
                        store.info(id).name + " (compute copy)");
  }
  for (const ParamUnit& u : units) opt.release(u);
  if (stage == 3) {
    REQUIRE_THROWS_WITH(store.param(0), Catch::Contains("is not gathered on this rank"));
  }

  // Restore the checkpoint into another stage (another shard layout) and take one more step.
  Model restored(c.model, c.moe);
  restored.allocate(Device::cpu(), dtype);
  restored.initialize(99);  // different values: the load must overwrite every element
  DistributedOptimizer restored_opt(restored.params(), c.optim, restore_stage, world, world, bucket_mb);
  for (size_t i = 0; i < num_params; ++i) {
    auto id = static_cast<ParamId>(i);
    restored.params().load_master_from_host(id, masters[i]);
    restored_opt.load_full_moments(id, m1[i], m2[i]);
  }
  check_sharded_state(restored_opt, restored.params(), restore_stage);
  step_both(restored, restored_opt, 6, nullptr);
  for (size_t i = 0; i < num_params; ++i) {
    auto id = static_cast<ParamId>(i);
    test::require_close(restored_opt.full_master(id), ref_store.master(id), tol.weight_atol, tol.weight_rtol,
                        store.info(id).name + " after a restore and step 6");
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// A hand-built store: awkward sizes so shard boundaries fall inside parameters of different
// decay kinds, a buffer, an expert group of other ranks than the dense one (EP emulation).

void build_store(ParamStore& s) {
  s.add("embed.tokens", {5, 3}, ParamGroup::dense, ParamKind::embedding);  // no decay
  s.add("layers.0.norm", {4}, ParamGroup::dense, ParamKind::norm_or_bias);  // no decay
  s.add("layers.0.w", {3, 4}, ParamGroup::dense, ParamKind::weight);        // decays
  s.add("layers.0.experts.w_up", {2, 5}, ParamGroup::expert, ParamKind::weight);
  s.add("layers.0.experts.bias", {3}, ParamGroup::expert, ParamKind::norm_or_bias);
  s.add("layers.0.router.expert_bias", {3}, ParamGroup::dense, ParamKind::buffer, ParamInit::zeros);
  s.add("layers.1.w", {2, 3}, ParamGroup::dense, ParamKind::weight);
  s.add("layers.1.experts.w_down", {5, 2}, ParamGroup::expert, ParamKind::weight);
  s.add("final_norm.weight", {3}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::ones);
}

// Per-(rank, step) gradients; the buffer never gets one.
std::vector<double> fake_grads(const ParamStore& s, ParamGroup g, int rank, int step) {
  auto values = test::random_values(s.group_numel(g), 7919u * step + 31u * rank + (g == ParamGroup::expert ? 5 : 0),
                                    -2.0, 2.0);
  for (const ParamInfo& p : s.infos()) {
    if (p.group == g && p.kind == ParamKind::buffer) std::fill_n(values.begin() + p.offset, p.numel(), 0.0);
  }
  return values;
}

void init_store(ParamStore& s, DType dtype, int ep_index) {
  build_store(s);
  s.allocate(Device::cpu(), dtype);
  s.initialize(11);
  // Ranks of different EP index hold different experts.
  for (size_t i = 0; i < s.infos().size(); ++i) {
    const ParamInfo& p = s.infos()[i];
    if (p.group != ParamGroup::expert) continue;
    auto values = test::random_values(p.numel(), 100u + ep_index + 10u * i);
    s.load_master_from_host(static_cast<ParamId>(i), host_tensor(values, p.shape, DType::f64));
  }
  auto buffer = host_tensor({0.25, -0.5, 1.0}, {3}, DType::f64);
  s.load_master_from_host(s.find("layers.0.router.expert_bias"), buffer);
}

void run_store_case(Communicator& world, DType dtype, int stage, int ep, double bucket_mb) {
  const int ranks = world.size(), rank = world.rank(), ep_index = rank % ep;
  const double lr = 3e-2;
  // Expert-DP groups: ranks with the same EP index (DP = ep x expert-DP).
  auto expert_comm = world.split(ep_index, rank);
  OptimConfig oc;
  oc.weight_decay = 0.5;  // large, so a wrong decay flag on any element shows
  ParamStore store, ref;
  init_store(store, dtype, ep_index);
  init_store(ref, dtype, ep_index);
  DistributedOptimizer opt(store, oc, stage, world, *expert_comm, bucket_mb);
  AdamW ref_opt(ref, oc);
  check_sharded_state(opt, store, stage);
  // One rank's sums are the norm (no host, no collective: the update stream may compute it) with
  // full gradients and no expert parallelism at stage 0/1, or a single-rank group at stage 2/3.
  REQUIRE(opt.norm_stays_on_device() == (stage >= 2 ? ranks == 1 : expert_comm->size() == ranks));
  REQUIRE(store.master_sharded(ParamGroup::dense) == (stage == 3 || (stage >= 1 && dtype == DType::bf16)));

  // The layout is meant to cut trained parameters of both decay flags: check that it does (2
  // ranks with ep = 2 have a single cut, in a decayed weight; sizes in build_store).
  if (stage >= 1) {
    bool cut_decayed = false, cut_undecayed = false;
    for (const ParamInfo& p : store.infos()) {
      FlatRange own = opt.shard_range(p.group), pr{p.offset, p.offset + p.numel()};
      if (p.kind == ParamKind::buffer || intersect(own, pr).empty() || own.contains(pr)) continue;
      (opt.decays(p) ? cut_decayed : cut_undecayed) = true;
    }
    std::vector<double> cuts{cut_decayed ? 1.0 : 0.0, cut_undecayed ? 1.0 : 0.0};
    world.all_reduce_max(cuts);
    REQUIRE(cuts[0] == 1.0);
    if (!(ranks == 2 && ep == 2)) REQUIRE(cuts[1] == 1.0);
  }

  for (int t = 1; t <= 5; ++t) {
    const double max_norm = t % 2 == 1 ? 1.0 : 100.0;  // norms are 4-10: clipped on odd steps only
    // Reference: dense gradients averaged over all ranks, experts over the ranks of this EP
    // index; the norm counts the dense part once and the experts of every EP index once.
    std::vector<double> dense(ref.group_numel(ParamGroup::dense), 0.0);
    std::vector<std::vector<double>> experts(ep, std::vector<double>(ref.group_numel(ParamGroup::expert), 0.0));
    for (int q = 0; q < ranks; ++q) {
      auto d = fake_grads(ref, ParamGroup::dense, q, t), e = fake_grads(ref, ParamGroup::expert, q, t);
      for (size_t i = 0; i < d.size(); ++i) dense[i] += d[i] / ranks;
      for (size_t i = 0; i < e.size(); ++i) experts[q % ep][i] += e[i] / (ranks / ep);
    }
    set_values(ref.flat_grads(ParamGroup::dense), dense);
    set_values(ref.flat_grads(ParamGroup::expert), experts[ep_index]);
    // Sums of squares of the gradients as stored (rounded to the accum dtype), as the optimizer sees them.
    auto stored = [&](const std::vector<double>& v) {
      double s = 0;
      Tensor as_stored = host_tensor(v, {static_cast<int64_t>(v.size())}, ref.master_dtype());
      for (double x : as_stored.to_vector<double>()) s += x * x;
      return s;
    };
    double ref_sq = stored(dense);
    for (int e = 0; e < ep; ++e) ref_sq += stored(experts[e]);
    double ref_norm = std::sqrt(ref_sq);
    if (ref_norm > max_norm) {
      for (ParamGroup g : k_groups) ops::scale(ref.flat_grads(g), static_cast<float>(max_norm / ref_norm));
    }
    ref_opt.step(lr, t);

    store.zero_grads();
    for (ParamGroup g : k_groups) set_values(store.flat_grads(g), fake_grads(store, g, rank, t));
    opt.reduce_gradients();
    double norm = opt.clip_grad_norm(max_norm);
    INFO("stage " << stage << " ep " << ep << " step " << t);
    REQUIRE(norm == Approx(ref_norm).epsilon(1e-6));  // f32 partial sums vs the host's double sums
    REQUIRE((norm > max_norm) == (t % 2 == 1));
    require_same_on_all_ranks(world, norm);
    opt.step(lr, t);
  }
  // Tolerance: the gradients are the reference's sums in another order (a few ulp of the
  // accum dtype) carried through five AdamW updates of size lr = 3e-2 on O(1) weights; bf16
  // compares the f32 masters (its compute copy is checked exactly below). Measured on 4 ranks:
  // under 1% of these bounds. A wrong decay flag on one element moves it by lr * 0.5 * |w| per step.
  const double atol = dtype == DType::f64 ? 1e-12 : 1e-6, rtol = dtype == DType::f64 ? 1e-10 : 1e-5;
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const std::string& name = store.info(id).name;
    test::require_close(opt.full_master(id), ref.master(id), atol, rtol, name);
    test::require_close(opt.full_moment1(id), ref_opt.moment1(id), atol, rtol, name + " moment 1");
    test::require_close(opt.full_moment2(id), ref_opt.moment2(id), atol, rtol, name + " moment 2");
  }
  // The compute copy: full below stage 3 (all-gathered), per unit at stage 3.
  for (const ParamUnit& u : param_units(store)) {
    if (stage == 3) {
      for (ParamGroup g : k_groups) {
        for (const ParamInfo& p : store.infos()) {
          if (p.group == g && u.range[static_cast<int>(g)].contains({p.offset, p.offset + p.numel()})) {
            REQUIRE_THROWS_WITH(store.param(store.find(p.name)), Catch::Contains("is not gathered on this rank"));
          }
        }
      }
    }
    opt.gather(u);
    opt.gather(u);  // nested: counted, released twice
    for (const ParamInfo& p : store.infos()) {
      if (!u.range[static_cast<int>(p.group)].contains({p.offset, p.offset + p.numel()})) continue;
      ParamId id = store.find(p.name);
      // Exactly this rank's full master cast to the compute dtype (the same cast the owners did).
      Tensor expected = host_tensor(opt.full_master(id).to_vector<double>(), p.shape, dtype);
      test::require_close(store.param(id), expected, 0, 0, p.name + " compute copy");
    }
    opt.release(u);
    if (stage == 3) REQUIRE_THROWS_WITH(opt.step(lr, 6), Catch::Contains("still in use"));
    opt.release(u);
  }
  if (stage == 3) {
    REQUIRE(store.num_attached(ParamGroup::dense) == 0);
    REQUIRE_THROWS_WITH(opt.release(opt.all_params()), Catch::Contains("is not gathered"));
  }
  // The buffer keeps its full master on every rank, whatever the stage.
  REQUIRE(store.master(store.find("layers.0.router.expert_bias")).to_vector<double>() ==
          std::vector<double>{0.25, -0.5, 1.0});
}

}  // namespace

TEST_CASE("ZeRO 0-3 on a tiny MoE model match one process averaging every rank's gradients", "[parallel][zero]") {
  auto world = make_world_communicator(Device::cpu());
  for (DType dtype : {DType::f64, DType::f32}) {
    for (int stage = 0; stage <= 3; ++stage) {
      // 1e-4 MiB = 104 bytes: many buckets, staged rounds; 25 MiB: one collective per group.
      for (double bucket_mb : {1e-4, 25.0}) {
        int restore_stage = (stage + 2) % 4;  // 0 <-> 2, 1 <-> 3: another layout and another path
        INFO("dtype " << dtype_name(dtype) << " stage " << stage << " bucket " << bucket_mb << " MiB");
        RunResult r = run_model_case(*world, dtype, stage, bucket_mb, restore_stage);
        // The clipping path runs: the first steps' norms exceed max_norm = 0.5.
        REQUIRE(r.clipped > 0);
      }
    }
  }
}

TEST_CASE("ZeRO shards cut parameters of different decay kinds; the norm counts every expert once",
          "[parallel][zero]") {
  auto world = make_world_communicator(Device::cpu());
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    for (int ep : {1, 2}) {
      for (int stage = 0; stage <= 3; ++stage) {
        for (double bucket_mb : {2e-5, 25.0}) {  // 2e-5 MiB = 20 bytes: chunks of 1-2 elements
          INFO("dtype " << dtype_name(dtype) << " ep " << ep << " stage " << stage << " bucket " << bucket_mb);
          run_store_case(*world, dtype, stage, ep, bucket_mb);
        }
      }
    }
  }
}

TEST_CASE("sharded ZeRO-2/3 gradients: units reduced after each backward hold the shard of the mean",
          "[parallel][zero]") {
  // The trainer's protocol by hand: each micro-batch opens every unit's gradients, runs its
  // backward, then reduces the units (last first) into the shard; two micro-batches accumulate.
  auto world = make_world_communicator(Device::cpu());
  const int ranks = world->size(), rank = world->rank();
  const Tolerances tol = tolerances(DType::f64);
  Config c = tiny_config(0.5);
  auto expert_comm = world->split(0, rank);
  for (int stage : {2, 3}) {
    INFO("ZeRO-" << stage << " on " << ranks << " ranks");
    Model model(c.model, c.moe), ref(c.model, c.moe);
    for (Model* m : {&model, &ref}) {
      m->allocate(Device::cpu(), DType::f64);
      m->initialize(7);
    }
    // 64-byte buckets: every unit's all-reduce takes several rounds.
    DistributedOptimizer opt(model.params(), c.optim, stage, *world, *expert_comm, 64.0 / (1024 * 1024));
    opt.shard_gradients();
    ParamStore& store = model.params();
    ParamStore& ref_store = ref.params();
    const std::vector<ParamUnit> units = param_units(store);
    ref_store.zero_grads();
    for (int q = 0; q < ranks; ++q) {
      for (int micro = 0; micro < 2; ++micro) backprop(ref, rank_batch(c.model, q, 10 + micro));
    }
    store.zero_grads();
    world->reset_traffic();
    expert_comm->reset_traffic();
    for (int micro = 0; micro < 2; ++micro) {
      for (const ParamUnit& u : units) {
        opt.gather(u);
        opt.open_grads(u);
      }
      backprop(model, rank_batch(c.model, rank, 10 + micro));
      for (auto u = units.rbegin(); u != units.rend(); ++u) {
        opt.release(*u);
        opt.reduce_unit_grads(*u);
      }
    }
    opt.reduce_gradients();  // nothing is open any more
    for (ParamGroup g : k_groups) {
      REQUIRE_THROWS_WITH(store.flat_grads(g), Catch::Contains("sharded over ranks (ZeRO-2/3)"));
      std::vector<double> mean = ref_store.flat_grads(g).to_vector<double>();
      for (double& v : mean) v /= ranks;
      test::require_close(store.grad_shard(g).to_vector<double>(), slice(mean, opt.shard_range(g)), tol.grad_atol,
                          tol.grad_rtol, "the gradient shard");
    }
    REQUIRE_THROWS_WITH(store.grad(0), Catch::Contains("is not open on this rank"));
    // Each bucket is reduce-scattered: summed over the ranks, (N-1) x its bytes are sent, half
    // of the 2(N-1) x an all-reduce of every unit's buffer sends.
    int64_t buffer_bytes = 0;
    for (ParamGroup g : k_groups) buffer_bytes += store.group_numel(g) * 8;
    std::vector<double> sent{
        static_cast<double>(world->traffic().reduction_bytes + expert_comm->traffic().reduction_bytes)};
    world->all_reduce_sum(sent);
    const double all_reduce_bytes = 2.0 * (ranks - 1) * 2 /* micro-batches */ * static_cast<double>(buffer_bytes);
    REQUIRE(sent[0] == all_reduce_bytes / 2);
  }
}

TEST_CASE("DistributedOptimizer rejects bad arguments with a message", "[parallel][zero]") {
  auto world = make_world_communicator(Device::cpu());
  ParamStore store;
  init_store(store, DType::f32, 0);
  OptimConfig oc;
  REQUIRE_THROWS_WITH(DistributedOptimizer(store, oc, 4, *world, *world, 25.0),
                      Catch::Contains("ZeRO stage must be 0, 1, 2 or 3, got 4"));
  REQUIRE_THROWS_WITH(DistributedOptimizer(store, oc, 1, *world, *world, 0.0),
                      Catch::Contains("bucket size must be positive"));
  if (world->size() > 2) {
    auto three = world->split(world->rank() < 3 ? 0 : 1, world->rank());
    if (world->rank() < 3 && world->size() == 4) {
      REQUIRE_THROWS_WITH(DistributedOptimizer(store, oc, 1, *world, *three, 25.0),
                          Catch::Contains("must divide the data-parallel group"));
    }
  }
  DistributedOptimizer opt(store, oc, 3, *world, *world, 25.0);
  REQUIRE_THROWS_WITH(DistributedOptimizer(store, oc, 1, *world, *world, 25.0), Catch::Contains("already sharded"));
  REQUIRE_THROWS_WITH(opt.gather(ParamGroup::dense, {0, store.group_numel(ParamGroup::dense) + 1}),
                      Catch::Contains("is outside the dense group's"));
  REQUIRE_THROWS_WITH(opt.release(ParamGroup::expert, {0, 1}), Catch::Contains("is not gathered"));
  // A straddling parameter's master cannot be read locally at stage 3.
  bool some_straddle = false;
  for (const ParamInfo& p : store.infos()) {
    FlatRange own = opt.shard_range(p.group), pr{p.offset, p.offset + p.numel()};
    if (p.kind == ParamKind::buffer || own.contains(pr) || world->size() == 1) continue;
    REQUIRE_THROWS_WITH(store.master(store.find(p.name)), Catch::Contains("DistributedOptimizer::full_master"));
    some_straddle = true;
  }
  REQUIRE((some_straddle || world->size() == 1));
  // Sharded gradients need a stage that shards them.
  ParamStore stage1_store;
  init_store(stage1_store, DType::f32, 0);
  DistributedOptimizer stage1(stage1_store, oc, 1, *world, *world, 25.0);
  REQUIRE_THROWS_WITH(stage1.shard_gradients(), Catch::Contains("sharded gradients need ZeRO stage 2 or 3, not 1"));
}

// parallel.overlap_update: at ZeRO-0 the update can run one unit at a time (on the update stream,
// each unit marked as it is queued); AdamW is elementwise, so the weights, compute copy and
// moments equal the whole-group update bit for bit, clipped or not, and every unit is reported
// once, in order.
TEST_CASE("the update by unit equals the update of whole groups", "[parallel][zero]") {
  auto world = make_world_communicator(Device::cpu());
  auto self = world->split(world->rank(), 0);  // one rank: ZeRO-0 on its own
  OptimConfig oc;
  oc.weight_decay = 0.5;
  ParamStore whole, by_unit;
  init_store(whole, DType::bf16, 0);
  init_store(by_unit, DType::bf16, 0);
  DistributedOptimizer a(whole, oc, 0, *self, *self, 25.0), b(by_unit, oc, 0, *self, *self, 25.0);
  const std::vector<ParamUnit> units = param_units(by_unit);
  REQUIRE_THROWS_WITH(b.step_by_unit(1e-2, 1, [](const ParamUnit&) {}), Catch::Contains("prepare_unit_steps first"));
  b.prepare_unit_steps(units);
  for (int t = 1; t <= 3; ++t) {
    for (ParamStore* s : {&whole, &by_unit}) {
      for (ParamGroup g : k_groups) set_values(s->flat_grads(g), fake_grads(*s, g, 0, t));
    }
    const double max_norm = t == 2 ? 100.0 : 1.0;  // clipped on steps 1 and 3
    a.clip_grads(max_norm);
    b.clip_grads(max_norm);
    a.step(3e-2, t);
    std::vector<std::string> seen;
    b.step_by_unit(3e-2, t, [&](const ParamUnit& u) { seen.push_back(u.name); });
    REQUIRE(seen == std::vector<std::string>{"embed", "layers.0", "layers.1", "final_norm"});
    for (ParamGroup g : k_groups) {
      INFO("step " << t << " group " << static_cast<int>(g));
      REQUIRE(by_unit.flat_master(g).to_vector<double>() == whole.flat_master(g).to_vector<double>());
      REQUIRE(by_unit.compute_copy_of_master(g).to_vector<double>() == whole.compute_copy_of_master(g).to_vector<double>());
      REQUIRE(b.moment1(g).to_vector<double>() == a.moment1(g).to_vector<double>());
      REQUIRE(b.moment2(g).to_vector<double>() == a.moment2(g).to_vector<double>());
    }
  }
  // Units that miss parameters, and a sharded optimizer, are refused.
  REQUIRE_THROWS_WITH(b.prepare_unit_steps({units.front()}), Catch::Contains("the units cover"));
  if (world->size() > 1) {
    ParamStore sharded;
    init_store(sharded, DType::bf16, 0);
    DistributedOptimizer z1(sharded, oc, 1, *world, *world, 25.0);
    REQUIRE_THROWS_WITH(z1.prepare_unit_steps(units), Catch::Contains("needs parallel.zero = 0"));
  }
}

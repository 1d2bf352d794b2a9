// Trainer: the step (micro-batches, DP gradient averaging, clipping, AdamW), the loop around it
// (schedule, logging, evaluation, checkpoints) and the benchmark.
#include "src/train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "routing/balancing.h"
#include "src/ops/ops.h"
#include "src/train/checkpoint.h"
#include "src/train/device_select.h"
#include "src/train/lr_schedule.h"
#include "src/train/distributed_optimizer.h"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Random tokens for benchmarks without a dataset: speed does not depend on the values.
data::Batch synthetic_batch(uint64_t seed, int64_t step, int64_t index, int64_t rows, int64_t seq_len, int64_t vocab) {
  data::Batch b;
  b.rows = rows;
  b.seq_len = seq_len;
  data::SplitMix64 rng(seed ^ (static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ull) ^ static_cast<uint64_t>(index));
  for (int64_t i = 0; i < rows * seq_len; ++i) {
    b.inputs.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab))));
    b.targets.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab))));
  }
  return b;
}

}  // namespace

Trainer::Trainer(const Config& config, int local_rank, Communicator& world)
    : config_(config), world_(&world), topology_(Topology::from_config(config, world.size(), world.rank())) {
  device_ = select_device(config.train, local_rank);
  dtype_ = select_dtype(config.train, device_);
  MOE_CHECK(world.device().is_cuda() == device_.is_cuda(), "the communicator is for ", world.device().str(),
            " but the model runs on ", device_.str());
  MOE_CHECK(topology_.tp == 1 && topology_.pp == 1, "parallel.tp = ", topology_.tp, " and parallel.pp = ",
            topology_.pp, ": tensor and pipeline parallelism are not implemented yet; use parallel.tp = 1 and "
            "parallel.pp = 1");
  groups_ = make_process_groups(world, topology_);
  if (is_root() && world.size() > 1) std::printf("%s\n", topology_.describe().c_str());
  model_ = std::make_unique<Model>(config.model, config.moe, groups_.ep.get());
  model_->allocate(device_, dtype_);
  model_->initialize(config.train.seed);
  optimizer_ = std::make_unique<DistributedOptimizer>(model_->params(), config.optim,
                                                      static_cast<int>(config.parallel.zero), *groups_.dp,
                                                      *groups_.expert_dp, config.parallel.bucket_mb);
  optimizer_->set_expert_grad_scale(1.0f / static_cast<float>(topology_.ep));
  for (ParamUnit& unit : param_units(model_->params())) units_[unit.name] = unit;
  if (config.parallel.zero == 3) {
    // ZeRO-3: each unit's parameters are gathered just before the model reads them and freed after.
    model_->set_param_hook([this](const std::string& name, bool acquire) {
      acquire ? optimizer_->gather(unit(name)) : optimizer_->release(unit(name));
    });
  }
  oracle_ = config.moe.num_experts > 0 && config.moe.router == "hash" && config.moe.hash_kind == "oracle";

  const TrainConfig& t = config.train;
  int64_t global_batch = t.micro_batch_size * t.grad_accum * topology_.dp;
  tokens_per_step_ = static_cast<double>(global_batch * config.model.seq_len);
  flops_per_token_ = train_flops_per_token(model_->active_params(), config.model.num_layers, config.model.d_model,
                                           config.model.seq_len);
  if (!config.data.train_path.empty()) {
    train_data_.emplace(data::TokenDataset::open(config.data.train_path));
    sampler_ = std::make_unique<data::BatchSampler>(*train_data_, t.seed, global_batch, config.model.seq_len);
  }
  if (!config.data.val_path.empty()) val_data_.emplace(data::TokenDataset::open(config.data.val_path));
  if (is_root()) std::filesystem::create_directories(t.run_dir);
}

Trainer::~Trainer() = default;

data::Batch Trainer::micro_batch(int64_t step, int64_t micro) const {
  const TrainConfig& t = config_.train;
  if (!sampler_) {
    int64_t index = groups_.dp->rank() * t.grad_accum + micro;
    return synthetic_batch(t.seed, step, index, t.micro_batch_size, config_.model.seq_len, config_.model.vocab_size);
  }
  data::DataParallelSlice slice{groups_.dp->rank(), groups_.dp->size(), t.micro_batch_size, t.grad_accum};
  return sampler_->micro_batch(step, slice, micro);
}

Batch Trainer::to_device(const data::Batch& b) const {
  int64_t vocab = config_.model.vocab_size;
  for (int32_t id : b.inputs) {
    MOE_CHECK(id >= 0 && id < vocab, "token id ", id, " in the data is outside the model vocabulary (model.vocab_size = ",
              vocab, "): the tokenizer's vocabulary is larger than the model's");
  }
  Batch out;
  int64_t n = b.rows * b.seq_len;
  out.inputs = Tensor::from_vector(b.inputs, {n}, DType::i32, device_);
  out.targets = Tensor::from_vector(b.targets, {n}, DType::i32, device_);
  out.batch_size = b.rows;
  return out;
}

bool Trainer::is_log_step(int64_t completed) const {
  return completed % config_.train.log_every == 0 || completed == config_.train.steps || completed == 1;
}

StepResult Trainer::train_step() {
  const TrainConfig& t = config_.train;
  ParamStore& store = model_->params();
  store.zero_grads();
  StepResult r;
  std::vector<double> sums(3, 0.0);  // loss_sum, targets, aux_loss: reduced over ranks at once
  const float aux_scale = 1.0f / static_cast<float>(t.grad_accum);
  const float loss_scale = 1.0f / static_cast<float>(t.micro_batch_size * t.grad_accum * config_.model.seq_len);
  const bool collect = is_log_step(step_ + 1);
  // global_batch balance scope: every forward of the step first, then the Switch statistics of
  // the whole global batch, then the backwards (activations of all micro-batches are kept).
  const bool global_scope = config_.moe.balance_scope == "global_batch" && model_->num_moe_layers() > 0;
  std::vector<Batch> batches(static_cast<size_t>(t.grad_accum));
  std::vector<ModelSaved> saves(static_cast<size_t>(t.grad_accum));
  std::vector<ForwardOutput> outs(static_cast<size_t>(t.grad_accum));
  auto backward_micro = [&](int64_t micro) {
    // The last micro-batch's backward starts each block's gradient reduction as soon as the
    // block is done, overlapping the rest of the backward (stage 0/1).
    if (micro == t.grad_accum - 1 && world_->size() > 1 && config_.parallel.overlap_grad_reduce) {
      model_->set_grad_hook([this](const std::string& name) { optimizer_->reduce_unit_async(unit(name)); });
    }
    model_->backward(batches[micro], saves[micro], loss_scale, aux_scale);
    model_->set_grad_hook(nullptr);
    saves[micro] = ModelSaved{};  // free the activations
    const ForwardOutput& out = outs[micro];
    sums[0] += out.loss_sum;
    sums[1] += static_cast<double>(out.num_targets);
    sums[2] += out.aux_loss / static_cast<double>(t.grad_accum);
    accumulate_routing_stats(r.routing, out.moe_stats, out.moe_layer_index, 1.0 / static_cast<double>(t.grad_accum));
  };
  for (int64_t micro = 0; micro < t.grad_accum; ++micro) {
    Batch& batch = batches[micro];
    batch = to_device(micro_batch(step_, micro));
    batch.noise_seed = t.seed ^ ((static_cast<uint64_t>(step_) * t.grad_accum + micro) * world_->size() +
                                 world_->rank()) * 0x9E3779B97F4A7C15ull;
    batch.collect_stats = collect;
    ForwardOutput& out = outs[micro];
    out = model_->forward(batch, saves[micro]);
    MOE_CHECK(std::isfinite(out.loss_sum) && std::isfinite(out.aux_loss), "loss is ",
              std::isfinite(out.loss_sum) ? out.aux_loss : out.loss_sum, " at step ", step_ + 1, " (micro-batch ",
              micro, " on rank ", world_->rank(), "): training diverged; lower optim.lr or check the data");
    if (!global_scope) backward_micro(micro);
  }
  if (global_scope) {
    apply_global_switch(saves, outs);
    for (int64_t micro = 0; micro < t.grad_accum; ++micro) backward_micro(micro);
  }
  optimizer_->reduce_gradients();
  if (world_->size() > 1) {
    world_->all_reduce_sum(sums);
    sums[2] /= world_->size();
    reduce_routing_stats(r.routing, *world_);
  }
  r.loss = sums[0] / std::max(sums[1], 1.0);
  r.aux_loss = sums[2];
  r.grad_norm = optimizer_->clip_grad_norm(config_.optim.grad_clip);
  double lr = learning_rate(config_.schedule, config_.optim, step_, t.steps);
  optimizer_->step(lr, step_ + 1);
  if (config_.moe.expert_bias_rate > 0) {
    std::vector<std::vector<int64_t>> loads;
    for (const auto& s : r.routing) loads.push_back(s.tokens_per_expert);
    model_->update_expert_biases(loads, config_.moe.expert_bias_rate);
  }
  auto biases = model_->expert_biases();
  for (size_t i = 0; i < r.routing.size() && i < biases.size(); ++i) r.routing[i].bias = biases[i];
  ++step_;
  return r;
}

void Trainer::apply_global_switch(std::vector<ModelSaved>& saves, std::vector<ForwardOutput>& outs) {
  // Counts, score sums and tokens of every MoE layer, summed over micro-batches and ranks.
  std::vector<double> packed;
  const auto& first = outs.front().moe_stats;
  for (size_t l = 0; l < first.size(); ++l) {
    const size_t experts = first[l].tokens_per_expert.size();
    std::vector<double> layer(2 * experts + 1, 0.0);
    for (const ForwardOutput& out : outs) {
      const MoeLayerStats& s = out.moe_stats[l];
      MOE_CHECK(s.score_sums.size() == experts, "balance_scope = global_batch needs the Switch statistics of layer ",
                out.moe_layer_index[l]);
      for (size_t e = 0; e < experts; ++e) {
        layer[e] += static_cast<double>(s.tokens_per_expert[e]);
        layer[experts + e] += s.score_sums[e];
      }
      layer[2 * experts] += static_cast<double>(s.tokens);
    }
    packed.insert(packed.end(), layer.begin(), layer.end());
  }
  world_->all_reduce_sum(packed);
  // Each micro-batch's backward scales its balance gradient by 1/grad_accum and the ranks average
  // theirs: scale up by that factor so the step's gradient is d(global loss)/d(scores).
  const double micro_batches = static_cast<double>(outs.size()) * world_->size();
  std::vector<std::vector<double>> grads;
  std::vector<double> values;
  size_t offset = 0;
  for (size_t l = 0; l < first.size(); ++l) {
    const size_t experts = first[l].tokens_per_expert.size();
    std::vector<int64_t> counts(experts);
    for (size_t e = 0; e < experts; ++e) counts[e] = std::llround(packed[offset + e]);
    std::vector<double> score_sums(packed.begin() + static_cast<std::ptrdiff_t>(offset + experts),
                                   packed.begin() + static_cast<std::ptrdiff_t>(offset + 2 * experts));
    auto tokens = std::llround(packed[offset + 2 * experts]);
    SwitchLoss loss = switch_loss(score_sums, counts, tokens, first[l].slots_per_token, config_.moe.aux_loss_coef);
    for (double& g : loss.grad_per_expert) g *= micro_batches;
    grads.push_back(loss.grad_per_expert);
    values.push_back(loss.value);
    offset += 2 * experts + 1;
  }
  for (size_t m = 0; m < saves.size(); ++m) {
    model_->set_switch_gradients(saves[m], grads, values);
    outs[m].aux_loss = 0;
    for (size_t l = 0; l < values.size(); ++l) {
      outs[m].moe_stats[l].aux_loss = values[l];
      outs[m].moe_stats[l].balance["switch"] = values[l];
      outs[m].aux_loss += values[l];
    }
  }
}

EvalResult Trainer::evaluate(int64_t max_batches) {
  MOE_CHECK(val_data_.has_value(), "evaluation needs data.val_path");
  const TrainConfig& t = config_.train;
  int64_t max_windows = max_batches > 0 ? max_batches * t.micro_batch_size * world_->size() : 0;
  data::EvalIterator it(*val_data_, t.micro_batch_size, config_.model.seq_len, max_windows, world_->rank(),
                        world_->size());
  std::vector<double> sums(2, 0.0);
  data::Batch b;
  while (it.next(b)) {
    Batch batch = to_device(b);
    batch.training = false;
    ModelSaved saved;
    ForwardOutput out = model_->forward(batch, saved);
    sums[0] += out.loss_sum;
    sums[1] += static_cast<double>(out.num_targets);
  }
  world_->all_reduce_sum(sums);
  MOE_CHECK(sums[1] > 0, "the validation data ", config_.data.val_path, " is shorter than one sequence of ",
            config_.model.seq_len + 1, " tokens");
  return {sums[0] / sums[1], static_cast<int64_t>(sums[1])};
}

void Trainer::log_step(const StepResult& r, double lr, double step_seconds, double elapsed) {
  double tokens_per_s = tokens_per_step_ / std::max(step_seconds, 1e-9);
  nlohmann::json record = {{"step", step_},       {"loss", r.loss},           {"lr", lr},
                           {"grad_norm", r.grad_norm}, {"tokens_per_s", tokens_per_s}, {"aux_loss", r.aux_loss},
                           {"elapsed_s", elapsed}};
  if (device_.is_cuda()) record["mfu"] = tokens_per_s * flops_per_token_ / k_h200_peak_flops / world_->size();
  for (const auto& layer : r.routing) record["moe"].push_back(routing_stats_json(layer));
  if (oracle_) record["oracle_hash"] = true;
  metrics_->write(record);
  if (!is_root()) return;
  double eta = elapsed / static_cast<double>(step_) * static_cast<double>(config_.train.steps - step_);
  std::string mfu = device_.is_cuda() ? " | mfu " + std::to_string(record["mfu"].get<double>() * 100).substr(0, 4) + "%"
                                      : "";
  std::printf("%sstep %lld/%lld | loss %.4f | aux %.4f | lr %.2e | %.0f tok/s%s | eta %s\n",
              oracle_ ? "[ORACLE HASH: routes on the target token] " : "", static_cast<long long>(step_), static_cast<long long>(config_.train.steps), r.loss, r.aux_loss, lr,
              tokens_per_s, mfu.c_str(), format_duration(eta).c_str());
  std::fflush(stdout);
}

void Trainer::train() {
  const TrainConfig& t = config_.train;
  MOE_CHECK(sampler_, "data.train_path is empty: training needs a token shard (see `moe tokenize`)");
  if (!t.resume.empty()) load_checkpoint(resolve_checkpoint(t.run_dir, t.resume), true);
  metrics_ = std::make_unique<MetricsWriter>(is_root() ? t.run_dir + "/metrics.jsonl" : "");
  if (is_root()) {
    std::printf("moe-engine: %lld parameters (%lld active per token), %lld MoE layers, %s %s, %d rank(s), "
                "%.0f tokens per step\n",
                static_cast<long long>(model_->total_params()), static_cast<long long>(model_->active_params()),
                static_cast<long long>(model_->num_moe_layers()), device_.str().c_str(), dtype_name(dtype_),
                world_->size(), tokens_per_step_);
  }
  auto start = Clock::now();
  int64_t first_step = step_;
  while (step_ < t.steps) {
    auto step_start = Clock::now();
    double lr = learning_rate(config_.schedule, config_.optim, step_, t.steps);
    StepResult r = train_step();
    cuda_synchronize();
    double step_seconds = seconds_since(step_start);
    bool last = step_ == t.steps;
    if (is_log_step(step_) || step_ == first_step + 1) {
      log_step(r, lr, step_seconds, seconds_since(start) * static_cast<double>(step_) / (step_ - first_step));
    }
    if (val_data_ && ((t.eval_every > 0 && step_ % t.eval_every == 0) || last)) {
      EvalResult e = evaluate(t.eval_batches);
      nlohmann::json record = {{"step", step_}, {"val_loss", e.loss}, {"val_ppl", std::exp(e.loss)},
                               {"val_tokens", e.tokens}};
      if (oracle_) record["oracle_hash"] = true;
      metrics_->write(record);
      if (is_root()) std::printf("%seval step %lld | val_loss %.4f | val_ppl %.2f\n", oracle_ ? "[ORACLE HASH] " : "", static_cast<long long>(step_), e.loss,
                                 std::exp(e.loss));
    }
    if ((t.save_every > 0 && step_ % t.save_every == 0) || last) save_checkpoint();
  }
}

nlohmann::json Trainer::bench(int64_t warmup_steps, int64_t timed_steps) {
  MOE_CHECK(timed_steps >= 1 && warmup_steps >= 0, "bench needs at least one timed step");
  metrics_ = std::make_unique<MetricsWriter>("");
  for (int64_t i = 0; i < warmup_steps; ++i) train_step();
  cuda_synchronize();
  world_->barrier();
  reset_peak_memory(device_.kind);
  auto start = Clock::now();
  double loss = 0;
  for (int64_t i = 0; i < timed_steps; ++i) loss = train_step().loss;
  cuda_synchronize();
  world_->barrier();
  double seconds = seconds_since(start);
  double tokens_per_s = tokens_per_step_ * static_cast<double>(timed_steps) / seconds;
  nlohmann::json out = {{"device", device_.str()},
                        {"ranks", world_->size()},
                        {"dtype", dtype_name(dtype_)},
                        {"params", model_->total_params()},
                        {"active_params", model_->active_params()},
                        {"tokens_per_step", tokens_per_step_},
                        {"warmup_steps", warmup_steps},
                        {"timed_steps", timed_steps},
                        {"step_ms", 1000.0 * seconds / static_cast<double>(timed_steps)},
                        {"tokens_per_s", tokens_per_s},
                        {"flops_per_token", flops_per_token_},
                        {"peak_memory_bytes", memory_stats(device_.kind).peak_bytes},
                        {"final_loss", loss}};
  if (device_.is_cuda()) out["mfu"] = tokens_per_s * flops_per_token_ / k_h200_peak_flops / world_->size();
  return out;
}

const ParamUnit& Trainer::unit(const std::string& name) const {
  auto it = units_.find(name);
  MOE_CHECK(it != units_.end(), "the model uses parameter unit '", name, "' the optimizer does not know");
  return it->second;
}

// Expert parameters are row shards over the EP group: the canonical tensor is their all-gather.
Tensor Trainer::full_tensor(const ParamInfo& info, const Tensor& host_local) {
  if (!info.is_row_shard() || topology_.ep == 1) return host_local;
  Communicator& ep = *groups_.ep;
  Tensor local = host_local.to(ep.device()).view({host_local.numel()});
  Tensor all = Tensor::empty({local.numel() * ep.size()}, local.dtype(), ep.device());
  ep.all_gather(local, all);
  return all.to(Device::cpu()).view(info.full_shape);
}

void Trainer::save_checkpoint() {
  std::string dir = config_.train.run_dir + "/checkpoints/step_" + std::to_string(step_);
  ParamStore& store = model_->params();
  CheckpointTensors tensors;
  for (size_t i = 0; i < store.infos().size(); ++i) {  // collective: every rank, every parameter, in order
    auto id = static_cast<ParamId>(i);
    const ParamInfo& info = store.info(id);
    Tensor weight = full_tensor(info, optimizer_->full_master(id));
    Tensor m1 = full_tensor(info, optimizer_->full_moment1(id));
    Tensor m2 = full_tensor(info, optimizer_->full_moment2(id));
    if (!is_root()) continue;
    tensors.weights.emplace_back(info.name, weight);
    tensors.moments.emplace_back(info.name + ".exp_avg", m1);
    tensors.moments.emplace_back(info.name + ".exp_avg_sq", m2);
  }
  if (is_root()) {
    write_checkpoint_tensors(dir, tensors, {step_, config_.train.seed, world_->size()}, config_);
    std::printf("saved checkpoint %s\n", dir.c_str());
  }
  world_->barrier();
}

void Trainer::load_checkpoint(const std::string& dir, bool with_optimizer) {
  // Any layout loads any checkpoint: each rank takes its rows of the canonical tensors.
  CheckpointFiles files = read_checkpoint_files(dir, with_optimizer);
  ParamStore& store = model_->params();
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const ParamInfo& info = store.info(id);
    store.load_master_from_host(id, files.take(info, info.name, false));
    if (with_optimizer) {
      optimizer_->load_full_moments(id, files.take(info, info.name + ".exp_avg", true),
                                    files.take(info, info.name + ".exp_avg_sq", true));
    }
  }
  if (with_optimizer) step_ = files.state.step;
  if (is_root()) std::printf("loaded checkpoint %s (step %lld)\n", dir.c_str(), static_cast<long long>(files.state.step));
}

}  // namespace moe

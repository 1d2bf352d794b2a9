// Trainer: the step (micro-batches, DP gradient averaging, clipping, AdamW), the loop around it
// (schedule, logging, evaluation, checkpoints) and the benchmark.
#include "src/train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "routing/balancing.h"
#include "src/data/indexed_dataset.h"
#include "src/data/tokenizer.h"
#include "src/model/vocab_parallel.h"
#include "src/config/router_kinds.h"
#include "src/ops/op_profile.h"
#include "src/ops/ops.h"
#include "src/tensor/device_name.h"
#include "src/train/checkpoint.h"
#include "src/train/data_state.h"
#include "src/train/device_select.h"
#include "src/train/lr_schedule.h"
#include "src/train/distributed_optimizer.h"
#include "src/train/pipeline_schedule.h"
#include "src/train/run_dir.h"
#include "src/util/log.h"
#include "src/util/progress.h"
#include "src/util/stop_signal.h"

namespace moe {

namespace {

// Start-up lines at info level (else debug): models this large, or an initialisation this slow.
constexpr int64_t k_large_model_params = 100'000'000;
constexpr double k_slow_start_seconds = 2.0;

// Random token windows for benchmarks without a dataset: speed does not depend on the values.
// first_sample: the global sample number of the first row (the objective's keys).
data::TokenWindows synthetic_windows(uint64_t seed, int64_t step, int64_t index, int64_t rows, int64_t seq_len,
                                     int64_t vocab, int64_t first_sample) {
  data::TokenWindows w;
  w.rows = rows;
  w.seq_len = seq_len;
  data::SplitMix64 rng(seed ^ (static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ull) ^ static_cast<uint64_t>(index));
  for (int64_t i = 0; i < rows * w.window_length(); ++i) {
    w.tokens.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab))));
  }
  w.starts.assign(static_cast<size_t>(rows), 0);
  for (int64_t r = 0; r < rows; ++r) w.keys.push_back(data::global_sample_key(first_sample + r));
  return w;
}

// The config's objective with its options; the tokenizer is read only when it needs special tokens.
std::unique_ptr<Objective> configured_objective(const Config& config, const Objective& defaults) {
  std::optional<data::Tokenizer> tokenizer;
  if (!objective_special_tokens(config).empty() && !config.data.tokenizer.empty()) {
    tokenizer = data::Tokenizer::load(config.data.tokenizer);
  }
  return make_objective(defaults.kind(), objective_options(config, tokenizer ? &*tokenizer : nullptr));
}

}  // namespace

Trainer::Trainer(const Config& config, int local_rank, Communicator& world)
    : config_(config), world_(&world), topology_(Topology::from_config(config, world.size(), world.rank())) {
  device_ = select_device(config.train, local_rank);
  dtype_ = select_dtype(config.train, device_);
  guard_ = std::make_unique<StepGuard>(config.train, device_);
  MOE_CHECK(world.device().is_cuda() == device_.is_cuda(), "the communicator is for ", world.device().str(),
            " but the model runs on ", device_.str());
  groups_ = make_process_groups(world, topology_, config.model.tie_embeddings);
  const RankCoords& at = topology_.coords;
  if (is_root() && world.size() > 1) log::info("{}", topology_.describe());
  ModelParallel layout{groups_.ep.get(),
                       groups_.tp.get(),
                       topology_.pp,
                       at.pp,
                       static_cast<int>(config.parallel.pp_virtual),
                       config.parallel.pp_layers,
                       config.parallel.sequence_parallel};
  layout.a2a_overlap = config.parallel.a2a_overlap;
  layout.shared_expert_stream = config.parallel.shared_expert_stream;
  log::Progress init_time;
  model_ = std::make_unique<Model>(config.model, config.moe, layout);
  // Start-up of a large model takes a while: say so before, and how long after. Small ones stay
  // quiet at info level, so a run that fails later still prints its one error line alone.
  const bool large = model_->total_params() >= k_large_model_params;
  log::write(large ? log::Level::info : log::Level::debug,
             fmt::format("model: initialising {} parameters ({} tensors on this rank) on {} ({})", model_->total_params(),
                         model_->params().infos().size(), device_.str(), dtype_name(dtype_)));
  model_->set_objective(configured_objective(config, model_->objective()));
  model_->set_recompute(config.train.recompute);
  model_->set_head_chunk(config.train.head_chunk_tokens);
  model_->allocate(device_, dtype_);
  model_->initialize(config.train.seed);
  const double init_seconds = init_time.seconds();
  log::write(large || init_seconds >= k_slow_start_seconds ? log::Level::info : log::Level::debug,
             fmt::format("model: initialised in {:.1f} s", init_seconds));
  tp_partial_done_.assign(model_->params().infos().size(), false);
  optimizer_ = std::make_unique<DistributedOptimizer>(model_->params(), config.optim,
                                                      static_cast<int>(config.parallel.zero), *groups_.dp,
                                                      *groups_.expert_dp, config.parallel.bucket_mb);
  optimizer_->set_expert_grad_scale(1.0f / static_cast<float>(topology_.ep));
  if (groups_.replica->size() > 1) {
    // The gradient norm over the whole model: TP shards and stages are different parameters,
    // a parameter replicated over the TP group counts once, a pipeline copy not at all.
    std::vector<double> weights;
    for (const ParamInfo& p : model_->params().infos()) {
      weights.push_back(p.pipeline_copy ? 0.0 : p.split_over == SplitOver::tp ? 1.0 : 1.0 / topology_.tp);
    }
    optimizer_->set_model_parallel_norm(groups_.replica.get(), weights);
  }
  const std::vector<ParamUnit> units = param_units(model_->params());  // registration = forward order
  for (const ParamUnit& unit : units) units_[unit.name] = unit;
  // parallel.overlap_update (ZeRO-0 on a GPU): each unit's update is marked on the update stream
  // and the next forward waits for a unit's mark when it acquires the unit (on_param_unit).
  update_stream_ = std::make_unique<UpdateStream>(device_, config.parallel.overlap_update && config.parallel.zero == 0);
  if (update_stream_->active()) {
    optimizer_->prepare_unit_steps(units);
    model_->set_param_hook([this](const std::string& name, bool acquire) { on_param_unit(name, acquire); });
  }
  if (config.parallel.zero >= 2) {
    // ZeRO-2/3: each rank keeps only its shard of the gradients; a module's gradients exist from
    // its backward until they are reduced into the shard, and (ZeRO-3) its parameters from just
    // before it is used until just after.
    optimizer_->shard_gradients();
    model_->set_param_hook([this](const std::string& name, bool acquire) { on_param_unit(name, acquire); });
  }
  oracle_ = routes_on_targets(config.moe);

  const TrainConfig& t = config.train;
  int64_t global_batch = t.micro_batch_size * t.grad_accum * topology_.dp;
  tokens_per_step_ = static_cast<double>(global_batch * config.model.seq_len);
  // The whole model's counts: each stage's, summed over the pipeline.
  std::vector<double> counts{static_cast<double>(model_->active_params()), static_cast<double>(model_->total_params())};
  if (topology_.pp > 1) groups_.pp->all_reduce_sum(counts);
  active_params_ = static_cast<int64_t>(counts[0]);
  total_params_ = static_cast<int64_t>(counts[1]);
  flops_per_token_ = train_flops_per_token(active_params_, config.model.num_layers, config.model.d_model,
                                           config.model.seq_len);
  if (device_.is_cuda()) peak_ = lookup_device_peak(cuda_device_name(), config.train.peak_tflops);
  // The data is checked when opened (ids, sizes), so a bad file fails before the first step.
  if (const auto specs = train_dataset_specs(config.data); !specs.empty()) {
    train_split_.emplace(data::TokenSplit::open(specs));
    check_train_split(*train_split_, config);
    sampler_ = make_train_sampler(*train_split_, config.data, t.seed, global_batch, window_seq_len());
  }
  if (const auto specs = val_dataset_specs(config.data); !specs.empty()) {
    val_split_.emplace(data::TokenSplit::open(specs));
    check_val_split(*val_split_, config, topology_.dp, is_root(), window_seq_len());
    const size_t shards = val_split_->shards().size();
    val_name_ = !config.data.val_path.empty() ? config.data.val_path
                                              : "data.val (" + std::to_string(shards) + " shard" +
                                                    (shards == 1 ? "" : "s") + ")";
  }
  if (is_root()) std::filesystem::create_directories(t.run_dir);
}

Trainer::~Trainer() {
  try {
    finish_update();  // nothing the update reads is freed before it is done
  } catch (...) {  // no throw from a destructor
  }
}

data::TokenWindows Trainer::micro_batch(int64_t train_step, int64_t micro) const {
  const TrainConfig& t = config_.train;
  const int64_t step = data_batch(train_step);
  const bool pairs = model_->objective().predicts_next_sentence();
  if (!sampler_) {
    int64_t index = groups_.dp->rank() * t.grad_accum + micro;
    const int64_t global_batch = t.micro_batch_size * t.grad_accum * groups_.dp->size(), first = step * global_batch;
    data::TokenWindows w = synthetic_windows(t.seed, step, index, t.micro_batch_size, window_seq_len(),
                                             config_.model.vocab_size, first + index * t.micro_batch_size);
    if (pairs) {  // next-sentence prediction's partners: windows of another synthetic stream
      w.partners = synthetic_windows(~t.seed, step, index, t.micro_batch_size, window_seq_len(),
                                     config_.model.vocab_size, first + index * t.micro_batch_size).tokens;
    }
    return w;
  }
  data::DataParallelSlice slice{groups_.dp->rank(), groups_.dp->size(), t.micro_batch_size, t.grad_accum};
  data::TokenWindows w = sampler_->micro_batch(step, slice, micro);
  if (pairs) data::add_partner_windows(w, train_split_->shards(), t.seed);
  return w;
}

double Trainer::ideal_bubble() const {
  return ideal_bubble_fraction(topology_.pp, static_cast<int>(config_.train.grad_accum),
                               static_cast<int>(config_.parallel.pp_virtual));
}

int64_t Trainer::window_seq_len() const { return model_->objective().window_seq_len(config_.model.seq_len); }

Batch Trainer::to_device(const data::TokenWindows& windows) const {
  return model_->objective().make_batch(windows, config_.model.vocab_size, device_);
}

bool Trainer::is_log_step(int64_t completed) const {
  return completed % config_.train.log_every == 0 || completed == config_.train.steps || completed == 1;
}

EvalResult Trainer::evaluate(int64_t max_batches) {
  MOE_CHECK(val_split_.has_value(), "evaluation needs validation data: set data.val_path or data.val");
  finish_update();  // its forward would wait unit by unit; evaluation is rare, so all at once
  const TrainConfig& t = config_.train;
  // Data-parallel replicas split the windows; the TP ranks and stages of one replica share them.
  const int replicas = topology_.dp, replica = topology_.coords.dp;
  int64_t max_windows = max_batches > 0 ? max_batches * t.micro_batch_size * replicas : 0;
  data::EvalIterator it(val_split_->shards(), t.micro_batch_size, window_seq_len(), max_windows, replica,
                        replicas);
  // loss sum, targets, correct predictions; next-sentence prediction: pair loss sum, correct pairs, pairs
  std::vector<double> sums(6, 0.0);
  const bool accuracy = model_->objective().reports_accuracy();
  const bool pairs = model_->objective().predicts_next_sentence();
  Tensor loss_sum = Tensor::zeros({1}, DType::f64, device_);  // on the device until the end
  data::TokenWindows b;
  ProgressDisplay progress;
  int64_t num_batches = 0;
  while (it.next(b)) {
    if (progress.due()) progress.show(fmt::format("eval: {} batches in {:.0f} s", num_batches, progress.seconds()));
    ++num_batches;
    if (pairs) data::add_partner_windows(b, val_split_->shards(), t.seed);
    Batch batch = to_device(b);
    batch.training = false;
    // The forward through the virtual stages in order: chunk c of stage s is virtual stage c * pp + s.
    const int stages = topology_.pp, me = topology_.coords.pp, num_virtual = stages * model_->num_chunks();
    Tensor x;
    for (int chunk = 0; chunk < model_->num_chunks(); ++chunk) {
      const int vs = chunk * stages + me;
      if (vs > 0 && stages > 1) {
        x = Tensor::empty({stage_rows(b.rows), config_.model.d_model}, dtype_, device_);
        groups_.pp->recv(x, (vs - 1) % stages);
      }
      ModelSaved saved;
      ForwardOutput out = model_->forward(batch, saved, x, chunk);
      if (out.loss.defined()) ops::sum_accumulate(out.loss, loss_sum);
      sums[1] += static_cast<double>(out.num_targets);
      if (out.nsp_loss.defined()) {
        sums[3] += ops::sum(out.nsp_loss);
        sums[4] += static_cast<double>(nsp_correct(out.nsp_loss));
        sums[5] += static_cast<double>(out.nsp_loss.numel());
      }
      if (accuracy && vs == num_virtual - 1) {
        sums[2] += static_cast<double>(vocab_parallel_correct(saved.logits, batch.host_targets,
                                                              config_.model.vocab_size, groups_.tp.get()));
      }
      x = saved.output;
      if (vs < num_virtual - 1 && stages > 1) groups_.pp->send(x, (vs + 1) % stages);
    }
  }
  progress.finish(fmt::format("eval: {} batches in {:.1f} s", num_batches, progress.seconds()), log::Level::debug);
  sums[0] = loss_sum.to_vector<double>()[0];
  if (topology_.coords.tp != 0) std::fill(sums.begin(), sums.end(), 0.0);  // the TP ranks hold the same loss
  world_->all_reduce_sum(sums);  // over the last stage's data-parallel replicas
  MOE_CHECK(sums[1] > 0, "the validation data ", val_name_, " is shorter than one sequence of ",
            window_seq_len() + 1, " tokens");
  const double loss = sums[0] / sums[1];  // the same on every rank (all-reduced): all stop together
  MOE_CHECK(std::isfinite(loss), "validation loss is ", loss, " on ", val_name_,
            ": the model's weights have diverged (NaN or Inf); use an earlier checkpoint or a lower optim.lr");
  EvalResult result{loss, static_cast<int64_t>(sums[1]), accuracy ? sums[2] / sums[1] : -1.0};
  if (pairs && sums[5] > 0) {
    result.nsp_loss = sums[3] / sums[5];
    result.nsp_accuracy = sums[4] / sums[5];
  }
  return result;
}

void Trainer::add_mfu(nlohmann::json& record, double tokens_per_s) const {
  if (!device_.is_cuda()) return;
  record.update(mfu_fields(tokens_per_s * flops_per_token_ / world_->size(), peak_));
}

void Trainer::log_step(const StepResult& r, double lr, double step_seconds, double elapsed) {
  double tokens_per_s = tokens_per_step_ / std::max(step_seconds, 1e-9);
  const MemoryStats memory = memory_stats(device_.kind);
  const double tokens_seen = tokens_per_step_ * static_cast<double>(step_);
  nlohmann::json record = {{"step", step_},       {"loss", r.loss},           {"lr", lr},
                           {"grad_norm", r.grad_norm}, {"tokens_per_s", tokens_per_s}, {"aux_loss", r.aux_loss},
                           {"elapsed_s", elapsed}, {"tokens_seen", static_cast<int64_t>(tokens_seen)},
                           {"memory_allocated_bytes", memory.current_bytes}, {"memory_peak_bytes", memory.peak_bytes},
                           {"time", utc_timestamp()}};
  add_mfu(record, tokens_per_s);
  for (const auto& layer : r.routing) record["moe"].push_back(routing_stats_json(layer));
  if (oracle_) record["oracle_hash"] = true;
  if (guard_->skips()) record["skipped_steps"] = r.skipped_steps;
  if (r.nsp_accuracy >= 0) {
    record["nsp_loss"] = r.nsp_loss;
    record["nsp_accuracy"] = r.nsp_accuracy;
  }
  std::string pipeline;
  if (!r.stage_seconds.empty()) {
    std::vector<double> stage_ms;
    for (double s : r.stage_seconds) stage_ms.push_back(1000.0 * s);
    record["stage_ms"] = stage_ms;
    record["bubble"] = r.bubble;
    record["bubble_ideal"] = ideal_bubble();
    pipeline = " | stages";
    for (size_t i = 0; i < stage_ms.size(); ++i) pipeline += (i ? "/" : " ") + std::to_string(std::lround(stage_ms[i]));
    pipeline += " ms | bubble " + std::to_string(std::lround(100 * r.bubble)) + "%";
  }
  metrics_->write(record);
  if (!is_root()) return;
  double eta = elapsed / static_cast<double>(step_) * static_cast<double>(config_.train.steps - step_);
  std::string mfu = record.contains("mfu") ? " | mfu " + std::to_string(record["mfu"].get<double>() * 100).substr(0, 4) + "%"
                                           : "";
  log::info("{}step {}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | gnorm {:.3g} | {:.0f} tok/s{} | {} tokens | mem {} "
            "(peak {}){} | eta {} | {}",
            oracle_ ? "[ORACLE HASH: routes on the target token] " : "", step_, config_.train.steps, r.loss,
            r.aux_loss, lr, r.grad_norm, tokens_per_s, mfu, format_count(tokens_seen),
            format_bytes(static_cast<double>(memory.current_bytes)), format_bytes(static_cast<double>(memory.peak_bytes)),
            pipeline, format_duration(eta), record["time"].get<std::string>());
}

int Trainer::agreed_stop_signal() const {
  std::vector<double> signal{static_cast<double>(stop_signal())};
  if (world_->size() > 1) world_->all_reduce_max(signal);  // one number: every rank stops together
  return static_cast<int>(signal[0]);
}

namespace {

// train.init_from: where this run starts in the sample order against what its source had read
// (data.skip_batches counts this run's global batches; the source's position is in samples).
void note_continued_data(const nlohmann::json& source_data, int64_t skip_batches, int64_t global_batch) {
  if (!source_data.is_object() || !source_data.contains("consumed_samples")) return;
  const auto read = source_data["consumed_samples"].get<int64_t>();
  const int64_t start = skip_batches * global_batch;
  if (read == start) {
    log::info("train.init_from: the run reads the data after the source's {} samples (data.skip_batches = {})", read,
              skip_batches);
    return;
  }
  log::warn("train.init_from: the source read {} training samples and this run starts at sample {} (data.skip_batches "
            "= {} x {} per step): it {}; data.skip_batches = {} continues where the source stopped",
            read, start, skip_batches, global_batch,
            start < read ? "reads part of the source's data again" : "skips data neither run reads",
            global_batch > 0 && read % global_batch == 0 ? std::to_string(read / global_batch) : "(none: not a whole "
                                                                                                   "number of steps)");
}

}  // namespace

int Trainer::train() {
  const TrainConfig& t = config_.train;
  MOE_CHECK(sampler_, "no training data: set data.train_path or data.train (token shards; see `moe tokenize`)");
  // Rank 0 alone writes the run directory, so it alone holds the lock (docs/config.md, "Run
  // directories"); an error there aborts every rank. A resume past train.steps is refused there.
  std::optional<DirLock> lock;
  // train.init_from is resolved by rank 0 alone (one checkpoint for every rank), before the run
  // directory is prepared: a mistyped path must fail before train.overwrite clears anything.
  std::string init_dir;
  if (t.resume.empty() && !t.init_from.empty() && is_root()) init_dir = resolve_init_from(t.init_from, t.run_dir);
  if (is_root()) lock.emplace(prepare_run_dir(config_, sampler_->global_batch()));
  // train.log: every line this rank printed (and the debug ones), from start-up on; a resume appends.
  if (is_root()) log::open_file(t.run_dir + "/train.log", !t.resume.empty());
  world_->barrier();  // staging cleaned, resume checked before any rank reads a checkpoint
  if (!t.resume.empty()) {
    const std::string dir = resolve_checkpoint(t.run_dir, t.resume);
    load_checkpoint(dir, true);
  } else if (!t.init_from.empty()) {
    // Megatron's --finetune: the weights only; step 0, fresh optimizer moments and schedule.
    const TrainerState source = load_checkpoint(root_text(init_dir), false);
    if (is_root()) note_continued_data(source.data, config_.data.skip_batches, sampler_->global_batch());
  }
  metrics_ = std::make_unique<MetricsWriter>(is_root() ? t.run_dir + "/metrics.jsonl" : "");
  if (is_root()) {
    log::info("moe-engine: {} parameters ({} active per token), {} MoE layers, {} {}, {} rank(s), {:.0f} tokens "
              "per step", total_params_, active_params_, empty_routing_stats().size(), device_.str(), dtype_name(dtype_),
              world_->size(), tokens_per_step_);
    log::info("{}", describe_training_data(*train_split_, *sampler_, config_.data.sampling));
    if (device_.is_cuda() && peak_.datasheet_flops == 0) {
      log::warn("mfu: no datasheet peak known for '{}': set train.peak_tflops (dense bf16 TFLOP/s per GPU) to "
                "report it", peak_.device);
    }
  }
  auto start = Clock::now();
  int64_t first_step = step_;
  read_loss_at(first_step + 1);  // the first step of a run is logged
  while (step_ < t.steps) {
    // Only a logged step is timed alone (the device drained before and after it); the others queue
    // behind the last, so the update (parallel.overlap_update) overlaps the next forward and the
    // host prepares the next step while the device runs this one.
    const bool logged = is_log_step(step_ + 1) || step_ == first_step;
    if (logged) cuda_synchronize();
    auto step_start = Clock::now();
    double lr = learning_rate(config_.schedule, config_.optim, step_, t.steps);
    StepResult r = train_step();
    if (logged) cuda_synchronize();
    double step_seconds = seconds_since(step_start);
    bool last = step_ == t.steps;
    if (logged) {
      log_step(r, lr, step_seconds, seconds_since(start) * static_cast<double>(step_) / (step_ - first_step));
    }
    if (val_split_ && ((t.eval_every > 0 && step_ % t.eval_every == 0) || last)) {
      EvalResult e = evaluate(t.eval_batches);
      nlohmann::json record = {{"step", step_}, {"val_loss", e.loss}, {"val_ppl", std::exp(e.loss)},
                               {"val_tokens", e.tokens}, {"time", utc_timestamp()}};
      if (oracle_) record["oracle_hash"] = true;
      if (e.accuracy >= 0) record["val_accuracy"] = e.accuracy;
      if (e.nsp_accuracy >= 0) {
        record["val_nsp_loss"] = e.nsp_loss;
        record["val_nsp_accuracy"] = e.nsp_accuracy;
      }
      metrics_->write(record);
      if (is_root()) {
        const std::string acc = e.accuracy >= 0 ? fmt::format(" | val_accuracy {:.4f}", e.accuracy) : "";
        log::info("{}eval step {} | val_loss {:.4f} | val_ppl {:.2f}{}", oracle_ ? "[ORACLE HASH] " : "", step_, e.loss,
                  std::exp(e.loss), acc);
      }
    }
    const bool saved = (t.save_every > 0 && step_ % t.save_every == 0) || last;
    if (saved) save_checkpoint();
    // A preempted job: finish the step, save, and say why (the CLI exits with 128 + signal).
    const int signal = last ? 0 : agreed_stop_signal();
    if (signal != 0) {
      if (!saved) save_checkpoint();
      if (is_root()) {
        log::info("stopped by {} after step {} of {}: checkpoint {}/checkpoints/step_{} saved; continue with "
                  "train.resume = \"latest\"", stop_signal_name(signal), step_, t.steps, t.run_dir, step_);
      }
      return signal;
    }
  }
  return 0;
}

nlohmann::json Trainer::bench(int64_t warmup_steps, int64_t timed_steps, bool breakdown) {
  MOE_CHECK(timed_steps >= 1 && warmup_steps >= 0, "bench needs at least one timed step");
  metrics_ = std::make_unique<MetricsWriter>("");
  for (int64_t i = 0; i < warmup_steps; ++i) train_step();
  cuda_synchronize();
  world_->barrier();
  reset_peak_memory(device_.kind);
  auto start = Clock::now();
  const int64_t waits_before = ops::host_waits();
  const double wait_seconds_before = ops::host_wait_seconds();
  // The last timed step reads its loss (final_loss); the waits are counted over the steps
  // before it, which read nothing unless one is a logging step.
  read_loss_at(step_ + timed_steps);
  StepResult last;
  int64_t waits_end = waits_before;
  // Host time to enqueue the steps before the last (which waits for its loss), less the time spent
  // waiting for the device: near the step time means the host, not the GPU, sets the pace.
  double enqueue_seconds = 0;
  for (int64_t i = 0; i < timed_steps; ++i) {
    if (i == timed_steps - 1 && timed_steps > 1) {
      waits_end = ops::host_waits();
      enqueue_seconds = seconds_since(start) - (ops::host_wait_seconds() - wait_seconds_before);
    }
    last = train_step();
  }
  if (timed_steps == 1) waits_end = ops::host_waits();
  const double loss = last.loss;
  const double waits_per_step =
      static_cast<double>(waits_end - waits_before) / static_cast<double>(std::max<int64_t>(timed_steps - 1, 1));
  cuda_synchronize();
  world_->barrier();
  double seconds = seconds_since(start);
  double tokens_per_s = tokens_per_step_ * static_cast<double>(timed_steps) / seconds;
  nlohmann::json out = {{"device", device_.str()},
                        {"ranks", world_->size()},
                        {"dtype", dtype_name(dtype_)},
                        {"params", total_params_},
                        {"active_params", active_params_},
                        {"tokens_per_step", tokens_per_step_},
                        {"warmup_steps", warmup_steps},
                        {"timed_steps", timed_steps},
                        {"step_ms", 1000.0 * seconds / static_cast<double>(timed_steps)},
                        {"tokens_per_s", tokens_per_s},
                        {"flops_per_token", flops_per_token_},
                        {"peak_memory_bytes", memory_stats(device_.kind).peak_bytes},
                        {"final_loss", loss},
                        {"host_waits_per_step", waits_per_step},
                        {"host_enqueue_ms_per_step",
                         1000.0 * enqueue_seconds / static_cast<double>(std::max<int64_t>(timed_steps - 1, 1))}};
  if (breakdown) out["breakdown"] = bench_breakdown(timed_steps);
  add_mfu(out, tokens_per_s);
  if (device_.is_cuda()) out["peak_tflops"] = peak_.datasheet_flops / 1e12;
  if (!last.stage_seconds.empty()) {  // pipeline parallelism: the last timed step's stages
    std::vector<double> stage_ms;
    for (double s : last.stage_seconds) stage_ms.push_back(1000.0 * s);
    out["stage_ms"] = stage_ms;
    out["bubble"] = last.bubble;
    out["bubble_ideal"] = ideal_bubble();
  }
  return out;
}

nlohmann::json Trainer::bench_breakdown(int64_t steps) {
  ops::OpProfile profile;
  ops::set_op_profile(&profile);
  auto start = Clock::now();
  for (int64_t i = 0; i < steps; ++i) train_step();
  cuda_synchronize();
  const double step_ms = 1000.0 * seconds_since(start) / static_cast<double>(steps);
  ops::set_op_profile(nullptr);
  nlohmann::json per_kind = nlohmann::json::object();
  double timed_ms = 0;
  for (const auto& [kind, ms] : profile.millis_by_kind()) {
    per_kind[kind] = ms / static_cast<double>(steps);
    timed_ms += ms / static_cast<double>(steps);
  }
  nlohmann::json per_op = nlohmann::json::object();
  for (const auto& [op, ms] : profile.millis_by_op()) per_op[op] = ms / static_cast<double>(steps);
  // Host time inside the ops (enqueueing them on CUDA); the rest of the host's step is the
  // trainer's own work between them.
  nlohmann::json host_per_op = nlohmann::json::object();
  double host_ops_ms = 0;
  for (const auto& [op, ms] : profile.host_millis_by_op()) {
    host_per_op[op] = ms / static_cast<double>(steps);
    host_ops_ms += ms / static_cast<double>(steps);
  }
  // The difference is time the device spent idle between ops (launch gaps, host work, waits).
  return {{"step_ms", step_ms},
          {"ms_per_step", per_kind},
          {"ms_per_step_by_op", per_op},
          {"host_ms_per_step_by_op", host_per_op},
          {"host_ops_ms_per_step", host_ops_ms},
          {"ops_ms_per_step", timed_ms},
          {"idle_ms_per_step", step_ms - timed_ms},
          {"ops_per_step", static_cast<double>(profile.ops()) / static_cast<double>(steps)}};
}

const ParamUnit& Trainer::unit(const std::string& name) const {
  auto it = units_.find(name);
  MOE_CHECK(it != units_.end(), "the model uses parameter unit '", name, "' the optimizer does not know");
  return it->second;
}

}  // namespace moe

// The training loop: micro-batches through the pipeline stages with gradient accumulation,
// tensor/expert/data-parallel gradient sums, clipping, AdamW, LR schedule, evaluation, metrics
// and checkpoints; plus the benchmark and evaluation entry points the CLI calls.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"
#include "parallel/topology.h"
#include "src/config/config.h"
#include "src/data/batch_sampler.h"
#include "src/data/token_split.h"
#include "src/model/model.h"
#include "src/tensor/device_timer.h"
#include "src/tensor/update_stream.h"
#include "src/train/metrics.h"
#include "src/train/moe_stats.h"
#include "src/train/checkpoint.h"
#include "src/train/distributed_optimizer.h"
#include "src/train/optimizer.h"
#include "src/train/step_guard.h"

namespace moe {

// loss and grad_norm are read from the device on logging steps, the last step, steps a
// checkpoint follows and the step after a resume (Trainer::reads_loss; every step on the CPU);
// NaN on other steps.
struct StepResult {
  double loss = 0;       // mean cross-entropy over the global batch
  double aux_loss = 0;   // balancing losses, mean over micro-batches and ranks
  double grad_norm = 0;  // before clipping
  // train.nonfinite = "skip_step": whether this step's update was skipped, and the run's skipped
  // steps in all (known on the steps that read their loss; false / the last count elsewhere).
  bool skipped = false;
  int64_t skipped_steps = 0;
  std::vector<LayerRoutingStats> routing;  // per MoE layer, over micro-batches and ranks
  // Pipeline parallelism: each stage's compute seconds in this step, and the bubble (the
  // fraction of stage-time spent waiting: 1 - mean(stage_seconds) / step wall time).
  std::vector<double> stage_seconds;
  double bubble = 0;
  // Next-sentence prediction (objective.nsp), on steps that read their loss: the mean pair loss
  // (also part of `loss`) and the share of pairs classified correctly; -1 otherwise.
  double nsp_loss = -1, nsp_accuracy = -1;
};

struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
  // Objectives with Objective::reports_accuracy (masked LM): the fraction of counted positions
  // whose target has the largest logit; -1 for the others.
  double accuracy = -1;
  // Next-sentence prediction (objective.nsp): mean pair loss (part of `loss`) and accuracy; else -1.
  double nsp_loss = -1, nsp_accuracy = -1;
};

class Trainer {
 public:
  // world: the data-parallel communicator (all ranks). Builds the model on the chosen device.
  Trainer(const Config& config, int local_rank, Communicator& world);
  ~Trainer();

  // The whole run: resume if asked, train to train.steps, evaluate, checkpoint. Returns 0, or the
  // stop signal (SIGTERM, SIGINT, SIGHUP; src/util/stop_signal.h) that any rank received before
  // the last step: every rank then stops after the same step, saves a checkpoint and returns it.
  int train();
  // Warm-up then timed steps (no evaluation, no checkpoints); one JSON object of results.
  // Times `timed_steps` steps after `warmup_steps`; with `breakdown`, as many more steps with every
  // op timed by kind (moe bench train --breakdown), so the headline numbers carry no event cost.
  nlohmann::json bench(int64_t warmup_steps, int64_t timed_steps, bool breakdown = false);
  // Loss over the validation split (train.eval_batches batches per rank; 0 = all).
  EvalResult evaluate(int64_t max_batches);
  // Loads weights (and optimizer + step when with_optimizer) from a checkpoint directory.
  // Returns the checkpoint's trainer state (its step and the data its run had read).
  TrainerState load_checkpoint(const std::string& dir, bool with_optimizer);
  // Rank 0's text on every rank of the world (its value elsewhere is ignored).
  std::string root_text(const std::string& text) const;
  void save_checkpoint();
  // One optimizer step over the global batch (all micro-batches of all ranks).
  StepResult train_step();
  // Also read the loss and gradient norm (a host wait) after the step that completes `step`.
  void read_loss_at(int64_t step) { read_loss_at_ = step; }
  // Tests: called every step with the 1-based step and the store once the gradients are reduced,
  // before clipping (where a test injects a non-finite gradient).
  void set_before_update_hook(std::function<void(int64_t, ParamStore&)> hook) { before_update_hook_ = std::move(hook); }

  // The model as the host and tools see it: a pending update (parallel.overlap_update) is
  // finished first, so GPU work queued on the model afterwards reads the updated weights.
  Model& model() {
    finish_update();
    return *model_;
  }
  int64_t step() const { return step_; }
  // The schedule's ideal bubble for this layout: (p - 1) / (v m + p - 1) with v = parallel.pp_virtual
  // (interleaved 1F1B), m = train.grad_accum; what bubble_ideal reports beside the measured bubble.
  double ideal_bubble() const;
  Device device() const { return device_; }

 private:
  nlohmann::json bench_breakdown(int64_t steps);
  data::TokenWindows micro_batch(int64_t step, int64_t micro) const;
  // The global batch of the sample order that training step `step` (0-based) reads: the data,
  // the data state of a checkpoint and the gating noise are keyed by it (data.skip_batches).
  int64_t data_batch(int64_t step) const { return step + config_.data.skip_batches; }
  Batch to_device(const data::TokenWindows& windows) const;  // through the model's objective
  // The sampled windows' seq_len: model.seq_len, or the objective's longer raw windows.
  int64_t window_seq_len() const;
  void log_step(const StepResult& r, double lr, double step_seconds, double elapsed);
  // Clipping, the NaN/Inf policy (step_guard.h) and AdamW for the step completing step_ + 1.
  // bias_loads: the aux-loss-free loads of the step (undefined without that balancing), summed
  // over the ranks here and applied to the expert biases before the weights' update.
  void guarded_update(StepResult& r, bool read_loss, Tensor& bias_loads);
  // The update: AdamW (and the expert biases), on the update stream by unit where it overlaps the
  // next forward (parallel.overlap_update), then the gradients zeroed there for the next step;
  // clip_first: the gradients' norm and clip scale first, on the same stream.
  void apply_update(double lr, Tensor& bias_loads, bool clip_first);
  // The main stream waits for a pending update (the gradients are written or the weights read).
  void finish_update();
  // A micro-batch's balancing loss must be finite (unless the step is skipped by the guard).
  void check_balancing_loss(const ForwardOutput& out, int micro) const;
  // Reads the routing statistics a CUDA forward left on the device and sums out.aux_loss again.
  static void read_routing_stats(ForwardOutput& out);
  void report_skips(StepResult& r, const std::string& reason);  // reads the skip record (step_guard.h)
  int agreed_stop_signal() const;  // the stop signal of any rank (an all-reduce max), or 0
  bool is_log_step(int64_t step) const;
  bool reads_loss(int64_t completed) const;  // whether the step completing `completed` reads its loss
  // balance_scope = global_batch: the Switch term of each MoE layer from the sums of every
  // micro-batch and rank of the stage, replacing each micro-batch's own (collect: read its value).
  void apply_global_switch(std::vector<ModelSaved>& saves, std::vector<ForwardOutput>& outs, bool collect);
  std::vector<LayerRoutingStats> empty_routing_stats() const;
  std::vector<Batch> step_batches(bool collect_stats) const;  // the step's micro-batches on the device
  void sum_tied_embedding_grads();
  // The aux-loss-free bias update from the step's loads (summed over the ranks here, on the
  // device; see bias_loads), and the biases read into the statistics on logging steps.
  void read_expert_biases(StepResult& r, bool collect);  // the biases into the step's metrics
  // Adds a forward's kept slots per expert into loads i64[all MoE layers, E] on the device.
  void count_bias_loads(const ForwardOutput& out, Tensor& loads) const;
  int64_t moe_layer_row(int64_t layer) const;  // MoE layers of the whole model before `layer`
  // Reads this step's stage marks (the one wait for them, after the step is queued).
  void record_pipeline_times(StepResult& r);
  // Rows of the activations a pipeline stage sends for `sequences` sequences: all their tokens, or
  // this TP rank's share under sequence parallelism.
  int64_t stage_rows(int64_t sequences) const {
    return sequences * config_.model.seq_len / (config_.parallel.sequence_parallel ? topology_.tp : 1);
  }
  // Tensor parallelism: sums over the TP group the gradients that cover a token slice only
  // (ParamInfo::tp_partial_grad): those of one unit, or (nullptr) all not summed yet this step.
  // again: sum the unit's even if done this step (ZeRO-2/3 reduce a block after every micro-batch).
  void sum_tp_partial_grads(const ParamUnit* only, bool again = false);
  // The model's acquire/release hook under ZeRO-2/3 (train_step.cpp): in a backward, a module's
  // gradients are opened before it writes them; at stage 3 a module is gathered just before use,
  // the next block's (in the pass's direction) prefetched, and released after.
  void on_param_unit(const std::string& name, bool acquire);
  // Opens the gradients of the modules that are not blocks (embedding, final norm, LM head): they
  // live through the step (tied embeddings sum over stages at its end) and reduce with the rest.
  void open_edge_grads();
  bool in_backward_ = false;              // a micro-batch's backward is running (ZeRO-2/3 hook)
  std::set<std::string> prefetched_;      // stage 3: blocks gathered ahead of their use
  bool is_root() const { return world_->rank() == 0; }
  Tensor full_tensor(const ParamInfo& info, const Tensor& host_local);
  // Every parameter's canonical name: on the first pipeline stage the whole model's (the other
  // stages send theirs; collective over the pipeline group), elsewhere this stage's.
  std::set<std::string> model_param_names();

  Config config_;
  Communicator* world_;
  Device device_;
  DType dtype_;
  std::unique_ptr<Model> model_;
  Topology topology_;
  ProcessGroups groups_;  // every communicator but the world (topology.h)
  std::vector<bool> tp_partial_done_;             // per parameter, this step
  // Pipeline parallelism: device marks around each stage compute of a step (no host wait).
  std::unique_ptr<DeviceIntervals> stage_times_;
  std::unique_ptr<DistributedOptimizer> optimizer_;
  std::map<std::string, ParamUnit> units_;  // the model's parameter units by name (ZeRO-2/3, overlap)
  const ParamUnit& unit(const std::string& name) const;
  std::optional<data::TokenSplit> train_split_, val_split_;
  std::unique_ptr<data::TrainSampler> sampler_;  // data.sampling over train_split_
  std::string val_name_;  // the validation data in messages: data.val_path, or "data.val (N shards)"
  nlohmann::json data_state(int64_t step) const;  // what a checkpoint at `step` records (data_state.h)
  std::unique_ptr<MetricsWriter> metrics_;
  int64_t step_ = 0;  // completed optimizer steps
  int64_t read_loss_at_ = -1;  // a step whose loss is read besides reads_loss's rule
  std::unique_ptr<StepGuard> guard_;  // the NaN/Inf policy
  int64_t reported_skips_ = 0;        // skipped steps already printed
  std::function<void(int64_t, ParamStore&)> before_update_hook_;
  // parallel.overlap_update: the update's stream, the units in forward order, whether the last
  // update already zeroed the gradients, and what it reads that the step would otherwise free.
  Tensor update_reads_;  // declared before the stream: destroyed after its join
  std::unique_ptr<UpdateStream> update_stream_;
  bool grads_zeroed_ = false;
  bool oracle_ = false;  // the future-token oracle hash: every log line says so
  double tokens_per_step_ = 0;
  int64_t active_params_ = 0, total_params_ = 0;  // the whole model's (all stages)
  double flops_per_token_ = 0;
  DevicePeak peak_;  // MFU's denominators (CUDA runs): train.peak_tflops or the device's datasheet
  // Adds "mfu" / "mfu_measured_ceiling" at this rate (CUDA runs where a peak is known).
  void add_mfu(nlohmann::json& record, double tokens_per_s) const;
};

}  // namespace moe

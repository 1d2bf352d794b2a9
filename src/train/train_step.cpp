// Trainer::train_step: one optimizer step over the global batch. Each pipeline stage runs its
// micro-batches in the schedule's order (pipeline_schedule.h); then the model-parallel gradient
// sums (tensor-parallel token slices, tied embeddings across stages), the data-parallel
// reduction, clipping and AdamW.
#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>

#include "routing/balancing_terms.h"
#include "src/config/moe_shape.h"
#include "src/ops/ops.h"
#include "src/train/lr_schedule.h"
#include "src/train/pipeline_schedule.h"
#include "src/train/trainer.h"
#include "src/util/log.h"

namespace moe {

bool Trainer::reads_loss(int64_t completed) const {
  if (!device_.is_cuda()) return true;  // free on the CPU: the NaN/Inf policy judges every step
  const int64_t save_every = config_.train.save_every;
  return is_log_step(completed) || completed == read_loss_at_ || (save_every > 0 && completed % save_every == 0);
}

StepResult Trainer::train_step() {
  const TrainConfig& t = config_.train;
  const int micro_batches = static_cast<int>(t.grad_accum);
  ParamStore& store = model_->params();
  if (!grads_zeroed_) store.zero_grads();  // else the last update zeroed them on its stream
  grads_zeroed_ = false;
  std::fill(tp_partial_done_.begin(), tp_partial_done_.end(), false);
  StepResult r;
  r.routing = empty_routing_stats();
  // loss_sum, targets, aux_loss; next-sentence prediction: pair loss sum, correct pairs, pairs. Reduced at once.
  std::vector<double> sums(6, 0.0);
  // The loss sum stays on the device (f64, summed in micro-batch order) until a step reads it.
  const bool read_loss = reads_loss(step_ + 1);
  Tensor loss_sum = Tensor::zeros({1}, DType::f64, device_);
  const float aux_scale = 1.0f / static_cast<float>(t.grad_accum);
  // The objective says how many positions of a sequence count in the loss (causal LM: all).
  const int64_t loss_positions = model_->objective().loss_positions(config_.model.seq_len);
  const float loss_scale = 1.0f / static_cast<float>(t.micro_batch_size * t.grad_accum * loss_positions);
  const bool collect = is_log_step(step_ + 1);
  // global_batch balance scope: every forward of the step first, then the Switch statistics of
  // the whole global batch, then the backwards (activations of all micro-batches are kept).
  // The schedule is the same on every stage (a stage without MoE layers included).
  const bool global_scope = config_.moe.balance_scope == "global_batch" && !r.routing.empty();
  std::vector<Batch> batches = step_batches(collect);
  // Aux-loss-free balancing: each MoE layer's kept slots per expert, counted on the device.
  Tensor bias_loads;
  if (config_.moe.expert_bias_rate > 0 && !r.routing.empty()) {
    bias_loads = Tensor::zeros({static_cast<int64_t>(r.routing.size()), moe_shape(config_.moe).num_experts},
                               DType::i64, device_);
  }
  // One saved forward and output per micro-batch and model chunk (micro * chunks + chunk).
  const int chunks = model_->num_chunks();
  std::vector<ModelSaved> saves(batches.size() * static_cast<size_t>(chunks));
  std::vector<ForwardOutput> outs(saves.size());
  // Per-stage busy time: marks on the stream around each compute call, read at the step's end.
  // A mark after a receive is queued runs when the received tensor arrived, so the wait for a
  // stage's input (or output gradient) is bubble, not compute; no host wait in between.
  const bool timed = topology_.pp > 1;
  if (timed && !stage_times_) stage_times_ = std::make_unique<DeviceIntervals>(device_);
  if (timed) stage_times_->reset();
  bool switched = false;
  // What follows each forward: the loss sum, the balancing check, the aux-loss-free loads.
  auto after_forward = [&](size_t at, int micro) {
    ForwardOutput& out = outs[at];
    check_balancing_loss(out, micro);
    if (out.loss.defined()) ops::sum_accumulate(out.loss, loss_sum);
    if (bias_loads.defined()) count_bias_loads(out, bias_loads);
  };
  // A backward whose last micro-batch is `micro` (run_it), with its gradient hooks; then the
  // activations of micro-batches `done` are freed and their targets counted.
  auto backward_of = [&](int micro, std::initializer_list<size_t> done, const std::function<void()>& run_it) {
    finish_update();  // the backward writes the gradients the last update read and zeroed
    if (optimizer_->gradients_sharded()) {
      // ZeRO-2/3: every micro-batch reduces each block's gradients into the shard as soon as the block
      // is done and frees them; only the shard and the modules in flight hold gradients.
      open_edge_grads();
      model_->set_grad_hook([this](const std::string& name) {
        sum_tp_partial_grads(&unit(name), true);
        optimizer_->reduce_unit_grads(unit(name));
      });
    } else if (micro == micro_batches - 1 && world_->size() > 1 && config_.parallel.overlap_grad_reduce) {
      // The last micro-batch's backward starts each block's gradient reduction as soon as the
      // block is done, overlapping the rest of the backward (stage 0/1).
      model_->set_grad_hook([this](const std::string& name) {
        sum_tp_partial_grads(&unit(name));
        optimizer_->reduce_unit_async(unit(name));
      });
    }
    in_backward_ = true;
    run_it();
    in_backward_ = false;
    model_->set_grad_hook(nullptr);
    for (size_t at : done) {
      saves[at] = ModelSaved{};  // free the activations
      sums[1] += static_cast<double>(outs[at].num_targets);
    }
  };
  StageCallbacks stage;
  stage.forward = [&](int micro, int chunk, const Tensor& input) {
    if (timed) stage_times_->begin();
    const auto at = static_cast<size_t>(micro * chunks + chunk);
    saves[at].head_grad_scale = loss_scale;  // the head may make its gradient in forward
    outs[at] = model_->forward(batches[static_cast<size_t>(micro)], saves[at], input, chunk);
    after_forward(at, micro);
    if (timed) stage_times_->end();
    return saves[at].output;
  };
  stage.backward = [&](int micro, int chunk, const Tensor& d_output) {
    if (timed) stage_times_->begin();
    if (global_scope && !switched) {
      if (model_->num_moe_layers() > 0) apply_global_switch(saves, outs, collect);
      switched = true;
    }
    const auto at = static_cast<size_t>(micro * chunks + chunk);
    Tensor d_input;
    backward_of(micro, {at}, [&] {
      d_input = model_->backward(batches[static_cast<size_t>(micro)], saves[at], loss_scale, aux_scale, d_output, chunk);
    });
    if (timed) stage_times_->end();
    return d_input;
  };
  const std::string schedule = global_scope ? "gpipe" : config_.parallel.pp_schedule;
  if (timed) stage_times_->start();
  Communicator* pp = topology_.pp > 1 ? groups_.pp.get() : nullptr;
  const Shape activations{stage_rows(t.micro_batch_size), config_.model.d_model};
  if (config_.parallel.a2a_overlap_microbatches) {
    // Micro-batches in pairs, each one's attention while the other's all-to-all is in flight
    // (Model::forward_pair); one stage, one chunk (validated).
    for (int a = 0; a + 1 < micro_batches; a += 2) {
      const auto ia = static_cast<size_t>(a), ib = ia + 1;
      saves[ia].head_grad_scale = saves[ib].head_grad_scale = loss_scale;
      std::array<ForwardOutput, 2> pair = model_->forward_pair({&batches[ia], &batches[ib]}, {&saves[ia], &saves[ib]});
      outs[ia] = std::move(pair[0]);
      outs[ib] = std::move(pair[1]);
      after_forward(ia, a);
      after_forward(ib, a + 1);
      backward_of(a + 1, {ia, ib}, [&] {
        model_->backward_pair({&batches[ia], &batches[ib]}, {&saves[ia], &saves[ib]}, loss_scale, aux_scale);
      });
    }
  } else if (chunks > 1) {
    run_pipeline_rounds(schedule, micro_batches, chunks, pp, activations, dtype_, device_, stage);
  } else {
    run_pipeline(pipeline_actions(schedule, topology_.pp, topology_.coords.pp, micro_batches), pp, activations, dtype_,
                 device_, stage, schedule == "1f1b");
  }
  if (timed) stage_times_->stop();

  sum_tp_partial_grads(nullptr);
  sum_tied_embedding_grads();
  optimizer_->reduce_gradients();
  if (read_loss) sums[0] = loss_sum.to_vector<double>()[0];  // the one host wait of a logging step
  // The routing statistics of every micro-batch, read now that the whole step is queued (those a
  // CUDA logging step left on the device cost no further wait).
  for (size_t at = 0; at < outs.size(); ++at) {
    ForwardOutput& out = outs[at];
    read_routing_stats(out);
    check_balancing_loss(out, static_cast<int>(at) / chunks);
    sums[2] += out.aux_loss / static_cast<double>(t.grad_accum);
    if (read_loss && out.nsp_loss.defined()) {
      sums[3] += ops::sum(out.nsp_loss);
      sums[4] += static_cast<double>(nsp_correct(out.nsp_loss));
      sums[5] += static_cast<double>(out.nsp_loss.numel());
    }
    accumulate_routing_stats(r.routing, out.moe_stats, out.moe_layer_index, 1.0 / static_cast<double>(t.grad_accum));
  }
  if (world_->size() > 1) {
    world_->all_reduce_sum(sums);
    // Every stage adds its layers' balancing losses; the TP ranks of a stage hold the same value.
    sums[2] /= topology_.dp * topology_.tp;
    reduce_routing_stats(r.routing, *world_, topology_.dp * topology_.tp);
  }
  r.loss = read_loss ? sums[0] / std::max(sums[1], 1.0) : std::nan("");
  r.aux_loss = sums[2];
  if (sums[5] > 0) {
    r.nsp_loss = sums[3] / sums[5];
    r.nsp_accuracy = sums[4] / sums[5];
  }
  if (before_update_hook_) before_update_hook_(step_ + 1, store);
  guarded_update(r, read_loss, bias_loads);
  read_expert_biases(r, collect);
  if (timed) record_pipeline_times(r);
  ++step_;
  return r;
}

void Trainer::check_balancing_loss(const ForwardOutput& out, int micro) const {
  // Under skip_step a non-finite balancing loss shows again as a non-finite gradient norm.
  MOE_CHECK(std::isfinite(out.aux_loss) || guard_->skips(), "balancing loss is ", out.aux_loss, " at step ", step_ + 1,
            " (micro-batch ", micro, " on rank ", world_->rank(), "): training diverged; lower optim.lr or check the data");
}

void Trainer::read_routing_stats(ForwardOutput& out) {
  bool any = false;
  for (MoeLayerStats& s : out.moe_stats) {
    any |= s.on_device.pending;
    read_device_stats(s);
  }
  if (!any) return;
  out.aux_loss = 0;
  for (const MoeLayerStats& s : out.moe_stats) out.aux_loss += s.aux_loss;
}

void Trainer::guarded_update(StepResult& r, bool read_loss, Tensor& bias_loads) {
  // Norm and clip scale stay on the device; a non-finite norm makes the scale NaN, and the fused
  // AdamW then leaves weights and moments alone on any step, read or not. Where the update has a
  // stream of its own, nothing is read back this step and the norm needs no other rank, the norm
  // runs there too: its pass over every gradient overlaps the next forward with the update.
  const bool clip_with_update = update_stream_->active() && !read_loss && optimizer_->norm_stays_on_device();
  if (!clip_with_update) optimizer_->clip_grads(config_.optim.grad_clip);
  r.grad_norm = read_loss ? optimizer_->grad_norm() : std::nan("");
  // The NaN/Inf policy judges the values where they are read: every CPU step, the GPU's logging
  // steps and every step a checkpoint follows (reads_loss). All ranks hold the same values.
  const std::string bad = read_loss ? guard_->judge(r.loss, r.grad_norm) : "";
  if (!bad.empty()) {
    MOE_CHECK(guard_->skips(), bad, " at step ", step_ + 1, " (rank ", world_->rank(),
              "): training diverged; lower optim.lr or check the data (or set train.nonfinite = \"skip_step\")");
    optimizer_->cancel_update();
  } else if (read_loss) {
    guard_->accept(r.loss);
  }
  apply_update(learning_rate(config_.schedule, config_.optim, step_, config_.train.steps), bias_loads,
               clip_with_update);
  if (read_loss) report_skips(r, bad);
}

void Trainer::report_skips(StepResult& r, const std::string& reason) {
  const SkipRecord record = guard_->check(step_ + 1, world_->rank());
  r.skipped = record.last == step_ + 1;
  r.skipped_steps = record.skipped;
  if (record.skipped > reported_skips_ && is_root()) {
    log::info("skipped the update of step {}: {} (train.nonfinite = \"skip_step\"; {} skipped in all, {} in a row)",
              record.last, reason.empty() ? "gradient norm is not finite" : reason, record.skipped, record.consecutive);
  }
  reported_skips_ = record.skipped;
}

std::vector<Batch> Trainer::step_batches(bool collect_stats) const {
  const TrainConfig& t = config_.train;
  std::vector<Batch> batches(static_cast<size_t>(t.grad_accum));
  for (int64_t micro = 0; micro < t.grad_accum; ++micro) {
    Batch& batch = batches[static_cast<size_t>(micro)];
    batch = to_device(micro_batch(step_, micro));
    // Gating noise differs per data-parallel rank; the stages and TP ranks of one pipeline share it.
    const auto batch_index = static_cast<uint64_t>(data_batch(step_));
    batch.noise_seed = t.seed ^ ((batch_index * t.grad_accum + static_cast<uint64_t>(micro)) *
                                     static_cast<uint64_t>(topology_.dp) + static_cast<uint64_t>(topology_.coords.dp)) *
                                    0x9E3779B97F4A7C15ull;
    batch.collect_stats = collect_stats;
  }
  return batches;
}

void Trainer::sum_tied_embedding_grads() {
  if (!groups_.embed || groups_.embed->size() == 1) return;
  // Tied embeddings: the first stage's table and the last stage's copy get the sum of both
  // gradients (lookup and head) and so stay equal.
  ParamStore& store = model_->params();
  Tensor grad = store.grad(store.find("embed.tokens"));
  groups_.embed->all_reduce_sum(grad);
}

std::vector<LayerRoutingStats> Trainer::empty_routing_stats() const {
  // Every MoE layer of the whole model, so that the stages' statistics add up over the world.
  std::vector<LayerRoutingStats> all;
  for (int64_t layer = 0; layer < config_.model.num_layers; ++layer) {
    if (!is_moe_layer(config_.model, config_.moe, layer)) continue;
    LayerRoutingStats s;
    s.layer = static_cast<int>(layer);
    s.tokens_per_expert.assign(static_cast<size_t>(moe_shape(config_.moe).num_experts), 0);
    all.push_back(s);
  }
  return all;
}

int64_t Trainer::moe_layer_row(int64_t layer) const {
  int64_t row = 0;
  for (int64_t l = 0; l < layer; ++l) row += is_moe_layer(config_.model, config_.moe, l) ? 1 : 0;
  return row;
}

void Trainer::count_bias_loads(const ForwardOutput& out, Tensor& loads) const {
  for (size_t l = 0; l < out.moe_stats.size(); ++l) {
    if (!out.moe_stats[l].kept_ids.defined()) continue;
    const int64_t row = moe_layer_row(out.moe_layer_index[l]);
    Tensor counts = loads.rows(row, row + 1).view({loads.size(1)});
    ops::count_experts(out.moe_stats[l].kept_ids, loads.size(1), counts);
  }
}

void Trainer::apply_update(double lr, Tensor& bias_loads, bool clip_first) {
  // The loads of the whole global batch: every rank's micro-batches (other stages add zeros), as
  // the statistics sum them; reduced on the main stream before the update begins.
  if (bias_loads.defined() && world_->size() > 1) world_->all_reduce_sum(bias_loads);
  UpdateScope scope(*update_stream_);
  if (clip_first) optimizer_->clip_grads(config_.optim.grad_clip);
  // The step guard's record of a skipped update reads the clip scale where it was made.
  guard_->record(optimizer_->clip_scale(), step_ + 1);
  // The expert biases first: the bias is a buffer, whose AdamW run only copies the master into
  // the compute copy (the same values), so the order changes nothing, and each unit's update is
  // whole when it is marked. A skipped update (NaN clip scale) leaves the biases alone.
  if (bias_loads.defined()) {
    model_->update_expert_biases(bias_loads, config_.moe.expert_bias_rate, optimizer_->clip_scale());
  }
  if (update_stream_->active()) {
    optimizer_->step_by_unit(lr, step_ + 1, [this](const ParamUnit& u) { update_stream_->mark(u.name); });
    model_->params().zero_grads();
    grads_zeroed_ = true;
    update_reads_ = bias_loads;  // freed on the main stream only after the join
  } else {
    optimizer_->step(lr, step_ + 1);
  }
}

void Trainer::finish_update() {
  update_stream_->join();
  update_reads_ = Tensor();
}

void Trainer::read_expert_biases(StepResult& r, bool collect) {
  if (!collect && device_.is_cuda()) return;  // read for the metrics only (free on the CPU)
  // This stage's MoE layers, in order.
  std::vector<LayerRoutingStats*> own;
  const std::vector<int64_t>& layers = model_->layers();
  for (auto& s : r.routing) {
    if (std::find(layers.begin(), layers.end(), s.layer) != layers.end()) own.push_back(&s);
  }
  auto biases = model_->expert_biases();
  for (size_t i = 0; i < own.size() && i < biases.size(); ++i) own[i]->bias = biases[i];
}

void Trainer::record_pipeline_times(StepResult& r) {
  // Each stage's compute time (its ranks of this pipeline) and the step's wall time, from which
  // the bubble: the fraction of stage-time spent waiting.
  std::vector<double> busy(static_cast<size_t>(topology_.pp), 0.0);
  busy[static_cast<size_t>(topology_.coords.pp)] = stage_times_->busy_ms() / 1000.0;
  groups_.pp->all_reduce_sum(busy);
  std::vector<double> wall{stage_times_->wall_ms() / 1000.0};
  groups_.pp->all_reduce_max(wall);
  r.stage_seconds = busy;
  r.bubble = bubble_fraction(busy, wall[0]);
}

void Trainer::sum_tp_partial_grads(const ParamUnit* only, bool again) {
  if (topology_.tp == 1) return;
  ParamStore& store = model_->params();
  for (size_t i = 0; i < store.infos().size(); ++i) {
    const ParamInfo& p = store.infos()[i];
    if (!p.tp_partial_grad || (tp_partial_done_[i] && !again)) continue;
    const auto id = static_cast<ParamId>(i);
    if (only != nullptr && !only->range[static_cast<int>(p.group)].contains(store.range(id))) continue;
    Tensor grad = store.grad(id);
    groups_.tp->all_reduce_sum(grad);
    tp_partial_done_[i] = true;
  }
}

void Trainer::apply_global_switch(std::vector<ModelSaved>& saves, std::vector<ForwardOutput>& outs, bool collect) {
  // The per-expert sums (score sums, slot counts, tokens) of every MoE layer of this stage, summed
  // over micro-batches and the stage's ranks (data-parallel ranks and the TP ranks' token slices),
  // on the device: two all-reduces of E numbers per layer, no host copy. Every rank of the stage
  // group routes as many tokens per micro-batch (equal batches, equal TP slices), so the global
  // batch's tokens are this rank's times the group's size.
  const auto& first = outs.front().moe_stats;
  const BalancingConfig balancing = balancing_config(config_.moe);
  // Each micro-batch's backward scales its balance gradient by 1/grad_accum, the TP ranks sum
  // their slices' and the data-parallel ranks average theirs: scale up by micro-batches x dp so
  // the step's gradient is d(global loss)/d(scores).
  const auto micro_batches = static_cast<float>(static_cast<double>(outs.size()) * topology_.dp);
  std::vector<Tensor> rows, values;
  for (size_t l = 0; l < first.size(); ++l) {
    const MoeLayerStats::PoolSums& p0 = first[l].pool;
    Tensor sums, counts;
    int64_t tokens = 0;
    for (size_t m = 0; m < outs.size(); ++m) {
      const MoeLayerStats::PoolSums& p = outs[m].moe_stats[l].pool;
      MOE_CHECK(p.score_sums.defined() && p.ids.defined(),
                "balance_scope = global_batch needs the Switch statistics of layer ", outs[m].moe_layer_index[l]);
      if (m == 0) {
        sums = p.score_sums.clone();
        counts = Tensor::zeros({sums.size(0)}, DType::i64, sums.device());
      } else {
        ops::accumulate(sums, p.score_sums);
      }
      ops::count_experts(p.ids, sums.size(0), counts);
      tokens += p.tokens;
    }
    groups_.stage->all_reduce_sum(sums);
    groups_.stage->all_reduce_sum(counts);
    tokens *= groups_.stage->size();
    Tensor value = Tensor::empty({1}, DType::f64, sums.device());
    Tensor row = Tensor::empty(sums.shape(), sums.dtype(), sums.device());
    ops::switch_balance_from_counts(sums, counts, tokens, p0.slots, balancing.switch_coef, value, row);
    ops::scale(row, micro_batches);
    rows.push_back(row);
    values.push_back(value);
  }
  // The value: read now where the statistics are read at once (the CPU, or a collecting step
  // under tensor parallelism), else left on the device beside the forward's own (read after the
  // step on a collecting step, not at all otherwise).
  std::vector<double> host(values.size(), std::nan(""));
  for (size_t m = 0; m < saves.size(); ++m) {
    model_->set_switch_gradients(saves[m], rows);
    outs[m].aux_loss = 0;
    for (size_t l = 0; l < values.size(); ++l) {
      MoeLayerStats& s = outs[m].moe_stats[l];
      if (s.on_device.pending) {
        s.on_device.balance = values[l];
        s.on_device.balance_names = {"switch"};
        continue;
      }
      if (!collect && device_.is_cuda()) continue;
      if (std::isnan(host[l])) host[l] = values[l].to_vector<double>()[0];
      s.balance = {{"switch", host[l]}};
      s.aux_loss = host[l];
      outs[m].aux_loss += host[l];
    }
  }
}

void Trainer::on_param_unit(const std::string& name, bool acquire) {
  if (acquire) update_stream_->wait(name);  // the last update of this unit is done (overlap_update)
  const ParamUnit& u = unit(name);
  if (!acquire) {
    optimizer_->release(u);
    return;
  }
  if (in_backward_) optimizer_->open_grads(u);
  if (optimizer_->zero_stage() < 3) return;
  if (prefetched_.erase(name) == 0) optimizer_->gather(u);  // a prefetched block already holds its reference
  // Prefetch the block this pass uses next (forward: the following layer, backward: the one before).
  constexpr const char* k_prefix = "layers.";
  if (name.rfind(k_prefix, 0) != 0) return;
  const int64_t layer = std::stoll(name.substr(std::char_traits<char>::length(k_prefix)));
  const int64_t next = layer + (in_backward_ ? -1 : 1);
  const std::vector<int64_t>& held = model_->layers();  // this stage's layers (its chunks' under interleaving)
  if (std::find(held.begin(), held.end(), next) == held.end()) return;
  const std::string next_name = k_prefix + std::to_string(next);
  if (prefetched_.insert(next_name).second) optimizer_->gather(unit(next_name));
}

void Trainer::open_edge_grads() {
  for (const auto& [name, u] : units_) {
    if (name.rfind("layers.", 0) != 0) optimizer_->open_grads(u);
  }
}

}  // namespace moe

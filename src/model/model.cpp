// Model assembly and the forward/backward of one pipeline stage (the whole model without
// pipeline parallelism): parameters "embed.tokens", "embed.positions", "layers.<i>.*",
// "final_norm.*", "lm_head.weight" (untied only), "nsp_head.*" (objective.nsp), whole or split
// over the TP / EP groups.
#include "src/model/model.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>

#include "routing/balancing_terms.h"
#include "routing/router_registry.h"
#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/nn/linear.h"
#include "src/model/masked_lm.h"
#include "src/model/vocab_parallel.h"
#include "src/ops/ops.h"

namespace moe {

MoeLayerConfig moe_layer_config(const ModelConfig& c, const MoeConfig& moe, ops::Activation act, double out_std) {
  const MoeShape shape = moe_shape(moe);
  MoeLayerConfig mc;
  mc.d_model = c.d_model;
  mc.num_experts = shape.num_experts;
  mc.d_expert = shape.d_expert;
  mc.activation = act;
  mc.capacity_factor = moe.capacity_factor;
  mc.drop_order = moe.drop_order == "position" ? ops::DropOrder::by_position : ops::DropOrder::by_probability;
  mc.num_shared = shape.num_shared;
  mc.d_shared = shape.d_shared;
  mc.shared_gate = moe.shared_gate;
  mc.balancing = balancing_config(moe);
  mc.init_std = c.init_std;
  mc.out_init_std = out_std;
  mc.experts_impl = moe.experts_impl;
  mc.pool_balance_sums = moe.balance_scope == "global_batch";
  return mc;
}

bool is_moe_layer(const ModelConfig& model, const MoeConfig& moe, int64_t layer) {
  if (moe.num_experts <= 0 || layer < 0 || layer >= model.num_layers) return false;
  // An encoder-decoder counts each stack from its first layer (the decoder's with decoder_every).
  const bool decoder = model.encoder_layers > 0 && layer >= model.encoder_layers;
  const int64_t i = decoder ? layer - model.encoder_layers : layer;
  const int64_t every = decoder && moe.decoder_every > 0 ? moe.decoder_every : moe.every;
  return i >= moe.first_dense && (i - moe.first_dense + 1) % every == 0;
}

std::pair<int64_t, int64_t> stage_layer_range(int64_t num_layers, int pp, int stage,
                                              const std::vector<int64_t>& stage_layers) {
  MOE_CHECK(pp >= 1 && stage >= 0 && stage < pp, "pipeline stage ", stage, " outside ", pp, " stages");
  std::vector<int64_t> counts = stage_layers;
  if (counts.empty()) {
    for (int s = 0; s < pp; ++s) counts.push_back(num_layers / pp + (s < num_layers % pp ? 1 : 0));
  }
  int64_t total = 0;
  for (int64_t n : counts) total += n;
  MOE_CHECK(static_cast<int>(counts.size()) == pp && total == num_layers, "parallel.pp_layers gives ", counts.size(),
            " stages with ", total, " layers, but parallel.pp = ", pp, " and model.num_layers = ", num_layers);
  for (int64_t n : counts) {
    MOE_CHECK(n >= 1, "parallel.pp_layers: every pipeline stage needs at least one layer (", num_layers, " layers over ",
              pp, " stages)");
  }
  int64_t first = 0;
  for (int s = 0; s < stage; ++s) first += counts[static_cast<size_t>(s)];
  return {first, first + counts[static_cast<size_t>(stage)]};
}

ops::RopeScaling rope_scaling_of(const ModelConfig& c) {
  ops::RopeScaling s;
  if (c.rope_scaling == "none") return s;
  MOE_CHECK(c.rope_scaling == "linear" || c.rope_scaling == "llama3", "model.rope_scaling = '", c.rope_scaling,
            "' (expected none, linear or llama3)");
  s.kind = c.rope_scaling == "linear" ? ops::RopeScalingKind::linear : ops::RopeScalingKind::llama3;
  s.factor = c.rope_factor;
  s.low_freq_factor = c.rope_low_freq_factor;
  s.high_freq_factor = c.rope_high_freq_factor;
  s.original_max_positions = static_cast<double>(c.rope_original_max_positions);
  return s;
}

Model::Model(const ModelConfig& model, const MoeConfig& moe, const ModelParallel& parallel)
    : config_(model),
      moe_config_(moe),
      parallel_(parallel),
      objective_(make_objective(objective_kind(model.objective))),
      tp_{parallel.tp, parallel.sequence_parallel} {
  const ModelConfig& c = model;
  MOE_CHECK(c.encoder_layers == 0 || (c.encoder_layers < c.num_layers && c.decoder_seq_len > 0 && parallel.pp == 1 &&
                                      !tp_.active() && objective_->kind() == ObjectiveKind::span_corruption),
            "model: model.encoder_layers = ", c.encoder_layers, " builds an encoder-decoder, which needs "
            "model.objective = 'span_corruption', model.decoder_seq_len > 0, fewer encoder layers than "
            "model.num_layers and parallel.tp = parallel.pp = 1");
  MOE_CHECK(c.encoder_layers > 0 || objective_->kind() != ObjectiveKind::span_corruption,
            "model: model.objective = 'span_corruption' trains an encoder-decoder; set model.encoder_layers and "
            "model.decoder_seq_len");
  MOE_CHECK(parallel.virtual_stages >= 1, "parallel.pp_virtual = ", parallel.virtual_stages, " must be at least 1");
  for (int chunk = 0; chunk < parallel.virtual_stages; ++chunk) {
    chunk_begin_.push_back(layers_.size());
    const auto [first, last] = stage_layer_range(c.num_layers, parallel.pp * parallel.virtual_stages,
                                                 chunk * parallel.pp + parallel.stage, parallel.stage_layers);
    for (int64_t i = first; i < last; ++i) layers_.push_back(i);
  }
  chunk_begin_.push_back(layers_.size());
  double out_std = c.init_std / std::sqrt(2.0 * static_cast<double>(c.num_layers));  // GPT-2 residual scaling
  tp_.part(c.vocab_size, "model.vocab_size (the vocabulary-parallel embedding and head)");
  // The token table: on the first stage, and with tied embeddings a copy on the last (its
  // gradient joins the first stage's every step, so both stay equal).
  const bool tied_copy = c.tie_embeddings && is_last_stage() && !is_first_stage();
  if (is_first_stage() || tied_copy) {
    tokens_ = add_row_parallel(store_, "embed.tokens", {c.vocab_size, c.d_model}, 1, ParamKind::embedding, c.init_std,
                               tp_);
    if (tied_copy) store_.mark_pipeline_copy(tokens_);
  }
  if (is_first_stage() && c.positions == "learned") {
    positions_ = store_.add("embed.positions", {c.seq_len, c.d_model}, ParamGroup::dense, ParamKind::embedding,
                            ParamInit::normal, c.init_std);
  }
  NormKind norm = norm_kind_from_name(c.norm);
  AttentionConfig attn{c.d_model, c.num_heads, c.num_kv_heads, c.seq_len, c.positions == "rope",
                       static_cast<float>(c.rope_theta), c.init_std, out_std, objective_->attention_mask()};
  attn.document_positions = c.reset_positions && c.positions == "rope";
  attn.document_mask = c.reset_attention;
  attn.rope_scaling = rope_scaling_of(c);
  attn.qkv_bias = c.attention_bias != "none";
  attn.out_bias = c.attention_bias == "all";
  attn.qk_norm = c.qk_norm;
  attn.qk_norm_eps = static_cast<float>(c.norm_eps);
  ops::Activation dense_act = ops::activation_from_name(c.activation);
  ops::Activation expert_act = ops::activation_from_name(moe.activation.empty() ? c.activation : moe.activation);
  for (int64_t i : layers_) {
    size_t moe_index = 0;  // moe.layer_routers counts the MoE layers of the whole model
    for (int64_t l = 0; l < i; ++l) moe_index += is_moe_layer(c, moe, l) ? 1 : 0;
    std::string prefix = "layers." + std::to_string(i);
    std::unique_ptr<DenseFfn> dense;
    std::unique_ptr<MoeLayer> moe_layer;
    const bool decoder = is_encoder_decoder() && i >= c.encoder_layers;
    AttentionConfig layer_attn = attn;
    CrossAttentionConfig cross{c.d_model, c.num_heads, c.num_kv_heads, c.decoder_seq_len, c.seq_len, c.init_std,
                               out_std};
    if (decoder) {  // causal self-attention over the decoder's positions
      layer_attn.mask = AttentionMask::causal;
      layer_attn.seq_len = c.decoder_seq_len;
    }
    if (is_moe_layer(c, moe, i)) {
      MoeLayerConfig mc = moe_layer_config(c, moe, expert_act, out_std);
      mc.ep_group = parallel.ep;
      mc.a2a_overlap = parallel.a2a_overlap;
      mc.shared_stream = parallel.shared_expert_stream;
      mc.tp_group = parallel.tp;
      mc.sequence_parallel = parallel.sequence_parallel;
      RouterSpec spec{c.d_model, c.vocab_size, mc.num_experts, moe_shape(moe).top_k, i, c.init_std};
      MoeConfig layer_moe = moe;  // moe.layer_routers picks this layer's router
      layer_moe.router = moe_layer_router(moe, static_cast<int64_t>(moe_index)).name;
      moe_layer = std::make_unique<MoeLayer>(store_, prefix + ".moe", mc,
                                             make_router(store_, prefix + ".moe.router", layer_moe, spec));
      if (tp_.active()) {
        // Each TP rank routes its own tokens through the whole router and experts.
        store_.mark_tp_partial_grad(prefix + ".moe.router.");
        store_.mark_tp_partial_grad(prefix + ".moe.experts.");
      }
    } else {
      dense = std::make_unique<DenseFfn>(store_, prefix + ".ffn", c.d_model, c.d_ff, dense_act, c.init_std, out_std,
                                         tp_, c.ffn_bias);
    }
    blocks_.push_back(std::make_unique<Block>(store_, prefix, norm, static_cast<float>(c.norm_eps), layer_attn,
                                              std::move(dense), std::move(moe_layer), tp_,
                                              decoder ? &cross : nullptr));
    if (is_encoder_decoder() && i == c.encoder_layers - 1) {
      encoder_norm_ = std::make_unique<Norm>(store_, "encoder_norm", c.d_model, norm, static_cast<float>(c.norm_eps));
    }
  }
  if (is_last_stage()) {
    final_norm_ = std::make_unique<Norm>(store_, "final_norm", c.d_model, norm, static_cast<float>(c.norm_eps));
    if (!c.tie_embeddings) {
      lm_head_ = add_column_parallel(store_, "lm_head.weight", {c.d_model, c.vocab_size}, 1, 1, ParamKind::weight,
                                     c.init_std, tp_);
    }
  }
  if (tp_.sequence_sharded()) mark_sequence_parallel_grads();
}

void Model::mark_sequence_parallel_grads() {
  for (int64_t i : layers_) {
    const std::string prefix = "layers." + std::to_string(i);
    for (const char* part : {".attn_norm.", ".ffn_norm.", ".attn.bo", ".ffn.b_down", ".moe.shared.gate"}) {
      store_.mark_tp_partial_grad(prefix + part);
    }
  }
  store_.mark_tp_partial_grad("final_norm.");
}

void Model::allocate(Device device, DType compute_dtype) { store_.allocate(device, compute_dtype); }

int64_t Model::num_moe_layers() const {
  int64_t n = 0;
  for (const auto& b : blocks_) n += b->is_moe() ? 1 : 0;
  return n;
}

int64_t Model::active_params() const {
  int64_t total = 0;
  std::map<std::string, int64_t> expert_numel;  // "layers.<i>" -> its routed experts' whole tensors
  for (const ParamInfo& p : store_.infos()) {
    // The token table is a lookup, not a matmul, except as the tied head of the last stage.
    if (p.name == "embed.tokens" && !(config_.tie_embeddings && is_last_stage())) continue;
    if (p.name == "embed.positions" || p.kind == ParamKind::buffer) continue;
    const int64_t whole = p.is_split() ? shape_numel(p.full_shape) : p.numel();
    if (p.group == ParamGroup::expert) {
      expert_numel[p.name.substr(0, p.name.find(".moe."))] += whole;  // all EP ranks' rows
    } else {
      total += whole;
    }
  }
  // Each MoE layer uses the experts its router really routes a token to (1 for hash, the
  // capacity factor for expert choice), rounded as count_params (src/tools/plan.cpp) does.
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!blocks_[i]->is_moe()) continue;
    const Router& router = blocks_[i]->moe().router();
    const double per_expert = static_cast<double>(expert_numel["layers." + std::to_string(layers_[i])]) /
                              static_cast<double>(router.num_experts());
    total += std::llround(per_expert * router.experts_per_token());
  }
  return total;
}

int64_t Model::total_params() const {
  int64_t total = 0;
  for (const ParamInfo& p : store_.infos()) {
    if (!p.pipeline_copy) total += p.is_split() ? shape_numel(p.full_shape) : p.numel();
  }
  return total;
}

Tensor Model::embed(const Tensor& inputs, const Tensor& doc_starts, int64_t seq_len) const {
  acquire("embed");
  const bool sharded = tp_.sequence_sharded();
  Tensor x = sharded ? vocab_parallel_embedding_partial(inputs, store_.param(tokens_), config_.vocab_size, tp_.comm)
                     : vocab_parallel_embedding(inputs, store_.param(tokens_), config_.vocab_size, tp_.comm);
  // Sequence parallelism: the positions join one rank's partial rows, so that the reduce-scatter
  // in place of the embedding's all-reduce adds them once.
  if (positions_ >= 0 && (!sharded || tp_.rank() == 0)) {
    ops::position_add_forward(x, store_.param(positions_), seq_len, config_.reset_positions ? doc_starts : Tensor());
  }
  if (sharded) x = tp_.reduce_tokens(x);
  release("embed");
  return x;
}

void Model::embed_backward(const Tensor& inputs, const Tensor& dx_tokens, const Tensor& doc_starts,
                           int64_t seq_len) const {
  const Tensor dx = tp_.gather_tokens(dx_tokens);  // sequence parallelism: the conjugate of embed's reduce-scatter
  if (positions_ >= 0) {
    Tensor dpos = store_.grad(positions_);
    ops::position_add_backward(dx, dpos, seq_len, config_.reset_positions ? doc_starts : Tensor());
  }
  Tensor dtable = store_.grad(tokens_);
  vocab_parallel_embedding_backward(inputs, dx, dtable, config_.vocab_size, tp_.comm);
}

Tensor Model::document_starts_of(const Batch& batch) const {
  if (!config_.reset_positions && !config_.reset_attention) return {};
  // From the host ids the batch carries (no device -> host copy), uploaded once per forward.
  std::vector<int32_t> starts = document_starts(batch.host_inputs, config_.seq_len, config_.eos_id);
  return Tensor::from_vector(starts, {static_cast<int64_t>(starts.size())}, DType::i32, batch.inputs.device());
}

RouteInputs Model::route_inputs(const Batch& batch, size_t block) const {
  // The host ids the batch carries (no device -> host copy per micro-batch).
  RouteInputs route{&batch.host_inputs, batch.host_targets.empty() ? nullptr : &batch.host_targets, config_.seq_len,
                    batch.training, 0};
  if (is_encoder_decoder()) {  // the encoder's ids have no targets; the decoder's are aligned with them
    const bool decoder = layers_[block] >= config_.encoder_layers;
    if (decoder) route.tokens = &batch.host_decoder_inputs;
    if (!decoder) route.targets = nullptr;
    route.seq_len = decoder ? config_.decoder_seq_len : config_.seq_len;
  }
  // Distinct gating noise per layer.
  route.noise_seed = batch.noise_seed * 1000003ull + static_cast<uint64_t>(layers_[block]);
  return route;
}

Tensor Model::run_blocks(const Tensor& x_in, const Batch& batch, ModelSaved& saved, size_t begin, size_t end,
                         const Tensor& memory) const {
  const size_t base = *std::prev(std::upper_bound(chunk_begin_.begin(), chunk_begin_.end() - 1, begin));
  if (begin == base) saved.blocks.assign(end - base, BlockSaved{});
  saved.blocks.resize(std::max(saved.blocks.size(), end - base));
  Tensor x = x_in;
  for (size_t i = begin; i < end; ++i) {
    acquire(block_unit(i));
    BlockSaved& b = saved.blocks[i - base];
    x = blocks_[i]->forward(x, batch.batch_size, route_inputs(batch, i), b, batch.collect_stats, saved.doc_starts,
                            memory);
    release(block_unit(i));
    if (recompute_) {
      // Keep the input and the MoE layer's statistics and balancing gradients (the trainer may
      // have replaced them for the global batch); backward rebuilds the rest.
      BlockSaved kept;
      kept.input = b.input;
      kept.moe.stats = std::move(b.moe.stats);
      kept.moe.balance_grads = std::move(b.moe.balance_grads);
      kept.moe.score_grad_row = std::move(b.moe.score_grad_row);
      b = std::move(kept);
    }
  }
  return x;
}

void Model::head_forward(const Tensor& x, ModelSaved& saved) const {
  acquire("final_norm");
  saved.hidden = final_norm_->forward(x, saved.final_norm);
  release("final_norm");
  acquire(head_unit());
  Tensor head = lm_head_ >= 0 ? store_.param(lm_head_) : store_.param(tokens_);
  const int64_t vocab_local = config_.vocab_size / tp_.size();
  const Tensor hidden = tp_.gather_tokens(saved.hidden);  // the head's column-parallel input
  saved.logits = Tensor::empty({hidden.size(0), vocab_local}, x.dtype(), x.device());
  ops::matmul(hidden, false, head, lm_head_ < 0, saved.logits);
  release(head_unit());
}

ForwardOutput Model::forward(const Batch& batch, ModelSaved& saved, const Tensor& input, int chunk) const {
  MOE_CHECK(batch.inputs.numel() == batch.batch_size * config_.seq_len, "batch of ", batch.inputs.numel(),
            " tokens is not ", batch.batch_size, " sequences of ", config_.seq_len);
  MOE_CHECK(chunk >= 0 && chunk < num_chunks(), "model chunk ", chunk, " outside the stage's ", num_chunks());
  const bool embeds = is_first_stage() && chunk == 0, ends = is_last_stage() && chunk == num_chunks() - 1;
  MOE_CHECK(embeds || input.defined(), "pipeline stage ", parallel_.stage, " (chunk ", chunk,
            ") needs the previous stage's activations");
  check_host_ids(batch);
  if (is_encoder_decoder()) return forward_encoder_decoder(batch, saved);
  saved.doc_starts = document_starts_of(batch);
  const size_t begin = chunk_begin_[static_cast<size_t>(chunk)], end = chunk_begin_[static_cast<size_t>(chunk) + 1];
  Tensor x = run_blocks(embeds ? embed(batch.inputs, saved.doc_starts, config_.seq_len) : input, batch, saved, begin,
                        end);
  return finish_forward(batch, saved, x, begin, end, ends);
}

ForwardOutput Model::finish_forward(const Batch& batch, ModelSaved& saved, const Tensor& x, size_t begin, size_t end,
                                    bool ends) const {
  ForwardOutput out;
  if (ends && fuses_head(saved, x.size(0), x.dtype())) {
    fused_head_forward(x, batch, saved, out);
    if (nsp_) add_nsp_loss(batch, saved, out);
    saved.hidden = Tensor();  // the head's backward was made: nothing reads the hidden states again
  } else if (ends) {
    head_forward(x, saved);
    VocabParallelLoss loss = vocab_parallel_cross_entropy(saved.logits, batch.targets, config_.vocab_size, tp_.comm,
                                                          &batch.host_targets);
    saved.lse = loss.lse;
    out.loss = loss.loss;
    out.num_targets = loss.num_targets;
    if (nsp_) add_nsp_loss(batch, saved, out);
  } else {
    saved.output = x;
  }
  for (size_t i = begin; i < end; ++i) {
    if (!blocks_[i]->is_moe()) continue;
    out.moe_stats.push_back(saved.blocks[i - begin].moe.stats);
    out.moe_layer_index.push_back(static_cast<int>(layers_[i]));
    out.aux_loss += saved.blocks[i - begin].moe.stats.aux_loss;
  }
  return out;
}

// Each pair loss, times the objective's loss positions, lands at its sequence's [CLS] position (outside
// the MLM loss): the trainer's mean over loss positions then adds the mean pair loss to the MLM's.
void Model::add_nsp_loss(const Batch& batch, ModelSaved& saved, ForwardOutput& out) const {
  acquire("nsp_head");
  out.nsp_loss = nsp_->forward(saved.hidden, config_.seq_len, nsp_labels(batch.host_targets, config_.seq_len),
                               saved.nsp);
  release("nsp_head");
  Tensor weighted = out.nsp_loss.clone();
  ops::scale(weighted, static_cast<float>(objective_->loss_positions(config_.seq_len)));
  Tensor per_token = out.loss.view({out.loss.numel(), 1});
  ops::scatter_add_rows(weighted.view({weighted.numel(), 1}), saved.nsp.rows, per_token);
}

Tensor Model::head_backward(const Batch& batch, const ModelSaved& saved, float loss_scale) const {
  Tensor dhidden;
  acquire(head_unit());
  if (saved.d_hidden.defined()) {  // made in forward (fused_head_forward)
    MOE_CHECK(loss_scale == saved.head_grad_scale, "model: backward with loss scale ", loss_scale,
              ", but the head's gradient was made in forward with ", saved.head_grad_scale);
    Tensor dhead = store_.grad(lm_head_ >= 0 ? lm_head_ : tokens_);
    ops::accumulate(dhead, saved.d_head);
    dhidden = saved.d_hidden;
  } else {
    Tensor dlogits = vocab_parallel_cross_entropy_backward(saved.logits, batch.targets, saved.lse, loss_scale,
                                                           config_.vocab_size, tp_.comm);
    const Tensor hidden = tp_.gather_tokens(saved.hidden);
    dhidden = empty_like(hidden);
    const bool tied = lm_head_ < 0;
    Tensor dhead = store_.grad(tied ? tokens_ : lm_head_);
    head_backward_gemms(dlogits, hidden, store_.param(tied ? tokens_ : lm_head_), tied, dhead, 1.0f, dhidden);
  }
  // Each rank's vocabulary shard gives part of the hidden states' gradient (sequence parallelism:
  // reduce-scattered to this rank's tokens).
  dhidden = tp_.reduce_tokens(dhidden);
  release(head_unit());
  if (nsp_) {
    acquire("nsp_head");
    nsp_->backward(saved.nsp, loss_scale * static_cast<float>(objective_->loss_positions(config_.seq_len)), dhidden);
    release("nsp_head");
  }
  acquire("final_norm");
  Tensor dx = final_norm_->backward(saved.final_norm, dhidden);
  release("final_norm");
  return dx;
}

Tensor Model::block_backward(size_t i, const Batch& batch, const BlockSaved& saved, const Tensor& dy,
                             float aux_scale, const Tensor& doc_starts, Tensor* d_memory) const {
  if (!recompute_) return blocks_[i]->backward(saved, dy, batch.batch_size, aux_scale, d_memory);
  BlockSaved rebuilt;
  blocks_[i]->forward(saved.input, batch.batch_size, route_inputs(batch, i), rebuilt, false, doc_starts);
  rebuilt.moe.stats = saved.moe.stats;
  rebuilt.moe.balance_grads = saved.moe.balance_grads;
  rebuilt.moe.score_grad_row = saved.moe.score_grad_row;
  return blocks_[i]->backward(rebuilt, dy, batch.batch_size, aux_scale);
}

Tensor Model::backward(const Batch& batch, const ModelSaved& saved, float loss_scale, float aux_scale,
                       const Tensor& d_output, int chunk) const {
  MOE_CHECK(chunk >= 0 && chunk < num_chunks(), "model chunk ", chunk, " outside the stage's ", num_chunks());
  const bool embeds = is_first_stage() && chunk == 0, ends = is_last_stage() && chunk == num_chunks() - 1;
  MOE_CHECK(ends || d_output.defined(), "pipeline stage ", parallel_.stage, " (chunk ", chunk,
            ") needs the gradient of its output from the next stage");
  if (is_encoder_decoder()) {
    backward_encoder_decoder(batch, saved, loss_scale, aux_scale);
    return {};
  }
  Tensor dx = ends ? head_backward(batch, saved, loss_scale) : d_output;
  if (recompute_) check_host_ids(batch);  // recomputation reroutes each block from the host ids
  const size_t begin = chunk_begin_[static_cast<size_t>(chunk)], end = chunk_begin_[static_cast<size_t>(chunk) + 1];
  for (size_t i = end; i-- > begin;) {
    acquire(block_unit(i));
    dx = block_backward(i, batch, saved.blocks[i - begin], dx, aux_scale, saved.doc_starts);
    release(block_unit(i));
    if (grad_hook_) grad_hook_(block_unit(i));
  }
  if (!embeds) return dx;
  embed_backward(batch.inputs, dx, saved.doc_starts, config_.seq_len);
  return {};
}

void Model::set_objective(std::unique_ptr<Objective> objective) {
  MOE_CHECK(objective != nullptr && objective->kind() == objective_->kind(), "model: the objective ",
            objective ? objective_name(objective->kind()) : "(none)", " replaces one of another kind (",
            objective_name(objective_->kind()), "): the blocks were built for its attention mask");
  objective_ = std::move(objective);
  if (objective_->predicts_next_sentence() && is_last_stage() && !nsp_) {
    MOE_CHECK(parallel_.pp == 1 && !tp_.active(), "next-sentence prediction (objective.nsp) is not built for tensor "
              "or pipeline parallelism");
    nsp_ = std::make_unique<NspHead>(store_, config_.d_model, config_.init_std);
  }
}

void Model::check_generation() const {
  MOE_CHECK(parallel_.pp == 1 && !tp_.active(), "generation runs on one rank holding the whole model (parallel.tp = 1, "
            "parallel.pp = 1)");
  MOE_CHECK(!is_encoder_decoder(), "scoring or continuing text needs a decoder-only model, but model.encoder_layers = ",
            config_.encoder_layers, " makes an encoder-decoder: it fills the sentinel spans of a corrupted input "
            "(`moe generate` does that)");
  MOE_CHECK(objective_->attention_mask() == AttentionMask::causal,
            "generation needs a causal model, but model.objective = '", objective_name(objective_->kind()),
            "' is an encoder only (bidirectional attention): it fills masked positions, it cannot continue a text");
}

Tensor Model::logits(const std::vector<int32_t>& tokens, int64_t batch_size) const {
  check_generation();
  ModelSaved saved;
  Batch batch = make_batch(tokens, {}, batch_size, store_.device());
  batch.training = false;
  saved.doc_starts = document_starts_of(batch);
  head_forward(run_blocks(embed(batch.inputs, saved.doc_starts, config_.seq_len), batch, saved, 0, blocks_.size()),
               saved);
  return saved.logits;
}

Tensor Model::layer_output(const std::vector<int32_t>& tokens, int64_t batch_size, int64_t layer) const {
  check_generation();
  MOE_CHECK(layer >= 0 && layer < static_cast<int64_t>(blocks_.size()), "layer ", layer,
            " is outside the model's layers [0, ", blocks_.size(), ")");
  ModelSaved saved;
  Batch batch = make_batch(tokens, {}, batch_size, store_.device());
  batch.training = false;
  saved.doc_starts = document_starts_of(batch);
  return run_blocks(embed(batch.inputs, saved.doc_starts, config_.seq_len), batch, saved, 0,
                    static_cast<size_t>(layer) + 1);
}

void Model::set_switch_gradients(ModelSaved& saved, const std::vector<Tensor>& grad_rows) const {
  MOE_CHECK(num_chunks() == 1, "balance_scope = global_batch runs GPipe, not interleaved model chunks");
  size_t next = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!blocks_[i]->is_moe()) continue;
    blocks_[i]->moe().set_switch_gradient(saved.blocks[i].moe, grad_rows.at(next));
    ++next;
  }
}

std::vector<std::vector<double>> Model::expert_biases() const {
  std::vector<std::vector<double>> out;
  for (const auto& block : blocks_) {
    if (!block->is_moe()) continue;
    const ParamId id = block->moe().router().expert_bias_id();
    out.push_back(id >= 0 ? store_.master(id).to_vector<double>() : std::vector<double>());
  }
  return out;
}

std::vector<Model::BiasId> Model::expert_bias_ids() const {
  std::vector<BiasId> out;
  int64_t own = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!blocks_[i]->is_moe()) continue;
    int64_t model_row = 0;
    for (int64_t l = 0; l < layers_[i]; ++l) model_row += is_moe_layer(config_, moe_config_, l) ? 1 : 0;
    const ParamId id = blocks_[i]->moe().router().expert_bias_id();
    if (id >= 0) out.push_back({id, own, model_row});
    ++own;
  }
  return out;
}

void Model::update_expert_bias(ParamId id, const Tensor& loads, double rate, const Tensor& skip) {
  Tensor bias = store_.master(id);
  ops::update_expert_bias(bias, loads, rate, skip);
  store_.refresh_from_master(id);
}

void Model::update_expert_biases(const Tensor& loads, double rate, const Tensor& skip) {
  int64_t model_moe_layers = 0;
  for (int64_t l = 0; l < config_.num_layers; ++l) model_moe_layers += is_moe_layer(config_, moe_config_, l) ? 1 : 0;
  MOE_CHECK(loads.ndim() == 2 && loads.size(0) == model_moe_layers, "update_expert_biases: loads ",
            shape_str(loads.shape()), " must have one row per MoE layer of the model (", model_moe_layers, ")");
  for (const BiasId& b : expert_bias_ids())
    update_expert_bias(b.id, loads.rows(b.model_row, b.model_row + 1).view({loads.size(1)}), rate, skip);
}

void Model::update_expert_biases(const std::vector<std::vector<int64_t>>& loads, double rate) {
  for (const BiasId& b : expert_bias_ids()) {
    const auto& host = loads.at(static_cast<size_t>(b.own_row));
    update_expert_bias(b.id, Tensor::from_vector(host, {static_cast<int64_t>(host.size())}, DType::i64, store_.device()),
                       rate, Tensor());
  }
}

}  // namespace moe

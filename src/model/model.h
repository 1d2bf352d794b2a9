// The decoder-only language model: token (and learned position) embedding, blocks, final
// norm, LM head (tied or untied) and the cross-entropy loss, built from the config.
#pragma once

#include <functional>
#include <array>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "src/config/config.h"
#include "src/model/batch.h"
#include "src/model/block.h"
#include "src/model/nsp_head.h"
#include "src/model/objective.h"
#include "src/nn/tensor_parallel.h"
#include "src/ops/ops.h"

namespace moe {

struct ModelSaved {
  std::vector<BlockSaved> blocks;  // the blocks of this stage (of the chunk with virtual stages)
  Norm::Saved final_norm;
  Tensor hidden;  // final normed hidden states [B*S,d] ([B*S/tp,d] under sequence parallelism)
  // logits [B*S, V/tp] (this rank's vocabulary shard; backward overwrites them with their
  // gradient), lse over all of V
  Tensor logits, lse;
  // Set by the trainer before a training forward: the loss scale its backward will use. With it
  // (and Model::set_head_chunk) the last stage makes the head's gradients already in forward,
  // chunk by chunk, and keeps them instead of the logits: d hidden [B*S,d] and the head weight's
  // gradient d_head (accum dtype, added to the parameter's gradient in backward).
  float head_grad_scale = 0;
  Tensor d_hidden, d_head;
  // A stage before the last: its output activations [B*S,d] for the next stage ([B*S/tp,d] under
  // sequence parallelism).
  Tensor output;
  // i32[B*S]: each token's document start (model.reset_positions / reset_attention), else undefined
  Tensor doc_starts;
  NspSaved nsp;  // next-sentence prediction (objective.nsp), last stage
  // Encoder-decoder: the encoder's normed output [B*S,d] that every cross-attention reads.
  Norm::Saved encoder_norm;
  Tensor memory;
};

// Where this rank's model sits in the parallel layout (each group nullptr = not split that way).
struct ModelParallel {
  Communicator* ep = nullptr;  // expert parallelism: the routed experts split over the group
  Communicator* tp = nullptr;  // tensor parallelism: heads, FFN widths and the vocabulary split
  int pp = 1, stage = 0;       // pipeline parallelism: this rank builds stage `stage` of pp
  // Interleaved pipelines: the stage holds virtual_stages model chunks, chunk c being virtual
  // stage c * pp + stage of pp * virtual_stages (the layers in that order).
  int virtual_stages = 1;
  // layers per (virtual) stage (sums to num_layers); empty = balanced
  std::vector<int64_t> stage_layers;
  // Sequence parallelism (with tp): the residual stream, the norms and a stage's input and output
  // hold this rank's tokens [B*S/tp, d] (rows [r*B*S/tp, (r+1)*B*S/tp)); see TpGroup.
  bool sequence_parallel = false;
  // parallel.a2a_overlap: MoE layers overlap their all-to-alls with the shared experts
  bool a2a_overlap = false;
  // parallel.shared_expert_stream: without expert or tensor parallelism, MoE layers run their
  // shared experts on a second CUDA stream beside the routed part
  bool shared_expert_stream = false;
};

// The layers [first, last) of a pipeline stage: stage_layers when given, else as even as
// possible with the extra layers on the first stages (the last one also carries the head).
std::pair<int64_t, int64_t> stage_layer_range(int64_t num_layers, int pp, int stage,
                                              const std::vector<int64_t>& stage_layers);

struct ForwardOutput {
  // Per-token cross-entropy [T] (accum, 0 where ignored) on the device, last stage only: the
  // trainer sums it on the device (ops::sum_accumulate) and reads the sum on logging steps.
  Tensor loss;
  int64_t num_targets = 0;  // from the batch's host targets: no copy from the device
  // The sum of `loss` read to the host (a host wait on the GPU); 0 on an earlier stage.
  double host_loss_sum() const { return loss.defined() ? ops::sum(loss) : 0.0; }
  double aux_loss = 0;     // sum over MoE layers of their balancing losses
  // Next-sentence prediction (objective.nsp), last stage: each sequence's pair loss [B] (accum),
  // also counted in `loss` (added at its [CLS] position, times the objective's loss_positions).
  Tensor nsp_loss;
  std::vector<MoeLayerStats> moe_stats;  // one per MoE layer, in layer order
  std::vector<int> moe_layer_index;      // the layer number of each entry above
};

// The keys and values of every block for KV-cached generation (Model::make_kv_cache).
struct KvCache {
  std::vector<Tensor> k, v;  // per block: [batch, local kv heads, max_len, head_dim]
  int64_t batch = 0, max_len = 0;
};

class Model {
 public:
  Model(const ModelConfig& model, const MoeConfig& moe, const ModelParallel& parallel = {});
  void allocate(Device device, DType compute_dtype);
  void initialize(uint64_t seed) { store_.initialize(seed); }

  // Forward of this pipeline stage, keeping what backward needs in saved. The first stage
  // embeds batch.inputs; a later one takes `input` [B*S,d], the previous stage's output. The
  // last stage ends with the head and the loss (loss_sum, num_targets); an earlier one leaves
  // its output activations in saved.output. Every stage reports its MoE layers. Routers read
  // the batch's host ids (check_host_ids); nothing is copied back from the device.
  // With virtual stages each call runs one chunk: the first stage's chunk 0 embeds, the last
  // stage's last chunk ends with the head.
  ForwardOutput forward(const Batch& batch, ModelSaved& saved, const Tensor& input = {}, int chunk = 0) const;
  // Accumulates parameter gradients of  loss_scale * loss_sum + aux_scale * aux_loss: the last
  // stage from its loss, an earlier one from d_output (the gradient of its output activations).
  // Returns the gradient of the stage's input (undefined on the first stage).
  Tensor backward(const Batch& batch, const ModelSaved& saved, float loss_scale, float aux_scale,
                  const Tensor& d_output = {}, int chunk = 0) const;
  // Two micro-batches A and B through the model together (parallel.a2a_overlap_microbatches): the
  // blocks interleave so that each MoE layer's all-to-all is in flight while the other
  // micro-batch's attention runs (forward: B's attention of block i inside A's MoE layer i, A's
  // attention of block i+1 inside B's; backward mirrored). The same results as forward and backward
  // of A then B (each parameter's gradient still adds A's part before B's). One stage, one chunk,
  // no recomputation, no tensor parallelism, a decoder-only or encoder-only model.
  std::array<ForwardOutput, 2> forward_pair(const std::array<const Batch*, 2>& batches,
                                            const std::array<ModelSaved*, 2>& saved) const;
  void backward_pair(const std::array<const Batch*, 2>& batches, const std::array<const ModelSaved*, 2>& saved,
                     float loss_scale, float aux_scale) const;
  int64_t pair_forwards() const { return pair_forwards_; }  // forward_pair calls so far
  // Activation recomputation: forward keeps each block's input only and backward runs the
  // block's forward again before its backward.
  void set_recompute(bool on) { recompute_ = on; }
  // train.head_chunk_tokens: a training forward given ModelSaved::head_grad_scale runs the LM head
  // and its loss over chunks of this many tokens and makes their gradient at once, so that only
  // one chunk's logits [chunk, V] exist at a time; 0 = the logits [B*S, V] are kept for backward.
  // Tensor parallelism (vocabulary-parallel loss), the encoder-decoder and micro-batches too small
  // to gain from it (fuses_head) keep the logits.
  void set_head_chunk(int64_t tokens);
  // Logits [B*S, V] of the token ids (B sequences of seq_len) for generation (no loss); one
  // rank holding the whole model, causal objectives only.
  Tensor logits(const std::vector<int32_t>& tokens, int64_t batch_size) const;
  // Under logits()'s conditions: the output hidden states [B*S, d] of block `layer` (0-based, before
  // the final norm) for the same token ids, running the blocks up to it only.
  Tensor layer_output(const std::vector<int32_t>& tokens, int64_t batch_size, int64_t layer) const;
  // KV-cached generation (src/model/model_decode.cpp), under logits()'s conditions and with no
  // document resets and routers that route each token alone (throws naming what is missing): a
  // zeroed cache for `batch` sequences of up to seq_len tokens.
  KvCache make_kv_cache(int64_t batch) const;
  // logits() of the cache's B sequences of seq_len, writing every position's keys and values.
  Tensor prefill(const std::vector<int32_t>& tokens, KvCache& cache) const;
  // One new token per sequence: tokens[B] at positions[B] in [0, seq_len) (the cache holds each
  // sequence's earlier positions) -> logits [B, V] of the tokens that follow them.
  Tensor decode_step(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
                     KvCache& cache) const;

  // Encoder-decoder (model.encoder_layers > 0, src/model/model_seq2seq.cpp): logits [B*Sd, V] of
  // the decoder ids (B sequences of decoder_seq_len) given the encoder ids (B of seq_len), for
  // span filling; one rank holding the whole model. Every decoder position attends to its own
  // and earlier ones only, so the logits of a position do not depend on the ids after it.
  Tensor seq2seq_logits(const std::vector<int32_t>& encoder_tokens, const std::vector<int32_t>& decoder_tokens,
                        int64_t batch_size) const;
  bool is_encoder_decoder() const { return config_.encoder_layers > 0; }

  // ZeRO-3: called with (unit, true) before a unit's parameters are read and (unit, false)
  // after; units are "embed", "layers.<i>", "encoder_norm" (encoder-decoder), "final_norm",
  // "lm_head" (the registration groups).
  using ParamHook = std::function<void(const std::string& unit, bool acquire)>;
  void set_param_hook(ParamHook hook) { param_hook_ = std::move(hook); }
  // Called with "layers.<i>" as soon as block i's backward has produced its gradients (the
  // trainer starts their reduction there, overlapping the rest of the backward); empty = none.
  using GradHook = std::function<void(const std::string& unit)>;
  void set_grad_hook(GradHook hook) { grad_hook_ = std::move(hook); }

  ParamStore& params() { return store_; }
  const ParamStore& params() const { return store_; }
  const ModelConfig& config() const { return config_; }
  // model.objective: targets, attention mask and loss positions (the trainer makes its batches here).
  const Objective& objective() const { return *objective_; }
  // Replaces the objective with one of the same kind built with its options (special token ids,
  // rates, seed: objective_options); the constructor's has the defaults and no token ids. One that
  // predicts the next sentence adds the nsp_head parameters to the last stage (before allocate).
  void set_objective(std::unique_ptr<Objective> objective);
  const MoeConfig& moe_config() const { return moe_config_; }
  const ModelParallel& parallel() const { return parallel_; }
  bool is_first_stage() const { return parallel_.stage == 0; }
  bool is_last_stage() const { return parallel_.stage == parallel_.pp - 1; }
  // The layer numbers of this stage's blocks, in order (chunk by chunk with virtual stages).
  const std::vector<int64_t>& layers() const { return layers_; }
  int num_chunks() const { return parallel_.virtual_stages; }
  // MoE layers of this stage.
  int64_t num_moe_layers() const;
  // Aux-loss-free balancing: b <- b - rate * sign(load - mean) per MoE layer with a bias, from
  // the step's global loads i64[MoE layers of the whole model, E] (row i: the model's i-th MoE
  // layer, so each stage reads its own rows) on the device, in place with no host wait; a NaN
  // skip (f32[1], the step's clip scale of a skipped update; undefined = none) leaves every bias
  // alone.
  void update_expert_biases(const Tensor& loads, double rate, const Tensor& skip = Tensor());
  // The same from host loads (one vector of tokens per expert per MoE layer, in order).
  void update_expert_biases(const std::vector<std::vector<int64_t>>& loads, double rate);
  // balance_scope = global_batch: the Switch gradient row of each MoE layer (in order, accum[E] on
  // the device) for one micro-batch's saved forward.
  void set_switch_gradients(ModelSaved& saved, const std::vector<Tensor>& grad_rows) const;
  // The current expert biases, one vector per MoE layer (empty where the router has none).
  std::vector<std::vector<double>> expert_biases() const;
  // Parameters of this stage touched per token (the routed experts counted k of E times), for
  // MFU; parts held by other EP or TP ranks included, a pipeline copy not.
  int64_t active_params() const;
  // All parameters of this stage, parts held by other EP or TP ranks included, a pipeline copy
  // not (summed over the stages, the whole model's count).
  int64_t total_params() const;

 private:
  // Sequence parallelism: the parameters whose gradients are partial sums over the TP group's
  // tokens (norms, the biases added after a reduce-scatter, the shared experts' gate).
  void mark_sequence_parallel_grads();
  // ids of sequences of seq_len (model.seq_len, or the decoder's length) -> x[T,d]
  Tensor embed(const Tensor& inputs, const Tensor& doc_starts, int64_t seq_len) const;
  void embed_backward(const Tensor& inputs, const Tensor& dx, const Tensor& doc_starts, int64_t seq_len) const;
  // Encoder-decoder forward and backward (the whole model on one stage).
  ForwardOutput forward_encoder_decoder(const Batch& batch, ModelSaved& saved) const;
  void backward_encoder_decoder(const Batch& batch, const ModelSaved& saved, float loss_scale, float aux_scale) const;
  // The encoder's normed output for the batch's inputs, keeping the blocks' state in saved.
  Tensor encode(const Batch& batch, ModelSaved& saved) const;
  // logits()'s conditions: one rank holding the whole model, a causal objective.
  void check_generation() const;
  // The batch's document starts on the model's device when a reset option needs them, else undefined.
  Tensor document_starts_of(const Batch& batch) const;
  // Blocks [begin, end) of this stage; saved.blocks[i - c] keeps block i, c the first block of its
  // chunk (saved.blocks is reset when begin is one). Decoder blocks read memory.
  Tensor run_blocks(const Tensor& x, const Batch& batch, ModelSaved& saved, size_t begin, size_t end,
                    const Tensor& memory = Tensor()) const;
  void head_forward(const Tensor& x, ModelSaved& saved) const;
  // The final norm, the head and the loss in chunks with their gradients (set_head_chunk):
  // out.loss and out.num_targets, saved.d_hidden and saved.d_head (src/model/model_fused_head.cpp).
  void fused_head_forward(const Tensor& x, const Batch& batch, ModelSaved& saved, ForwardOutput& out) const;
  // Whether the training forward of `tokens` rows runs the chunked head: set up for it, and the
  // logits it avoids keeping, [tokens, V] in the compute dtype, outweigh what it keeps instead,
  // the head weight's gradient [V, d] in the accumulation dtype and d hidden [tokens, d].
  bool fuses_head(const ModelSaved& saved, int64_t tokens, DType compute) const;
  // After the blocks [begin, end): the head and loss (ends) or the stage's output, and the MoE
  // layers' statistics.
  ForwardOutput finish_forward(const Batch& batch, ModelSaved& saved, const Tensor& x, size_t begin, size_t end,
                               bool ends) const;
  void check_pairable() const;
  Tensor head_backward(const Batch& batch, const ModelSaved& saved, float loss_scale) const;
  void add_nsp_loss(const Batch& batch, ModelSaved& saved, ForwardOutput& out) const;
  Tensor block_backward(size_t i, const Batch& batch, const BlockSaved& saved, const Tensor& dy, float aux_scale,
                        const Tensor& doc_starts, Tensor* d_memory = nullptr) const;
  RouteInputs route_inputs(const Batch& batch, size_t block) const;
  // Every MoE layer whose router has an expert bias: its bias buffer, its MoE layer number on this
  // stage and in the whole model.
  struct BiasId {
    ParamId id;
    int64_t own_row, model_row;
  };
  std::vector<BiasId> expert_bias_ids() const;
  void update_expert_bias(ParamId id, const Tensor& loads, double rate, const Tensor& skip);
  std::string block_unit(size_t i) const { return "layers." + std::to_string(layers_[i]); }
  // The first block of each chunk, and blocks_.size() last (num_chunks() + 1 entries).
  std::vector<size_t> chunk_begin_;

  ModelConfig config_;
  MoeConfig moe_config_;
  ModelParallel parallel_;
  std::unique_ptr<Objective> objective_;
  TpGroup tp_;
  std::vector<int64_t> layers_;  // the layer number of each block
  bool recompute_ = false;
  int64_t head_chunk_ = 0;
  ParamStore store_;
  ParamId tokens_ = -1, positions_ = -1, lm_head_ = -1;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Norm> final_norm_;
  std::unique_ptr<NspHead> nsp_;  // objective.nsp, last stage
  std::unique_ptr<Norm> encoder_norm_;  // encoder-decoder: after the encoder's blocks
  ParamHook param_hook_;
  mutable int64_t pair_forwards_ = 0;
  GradHook grad_hook_;
  void acquire(const std::string& unit) const { if (param_hook_) param_hook_(unit, true); }
  void release(const std::string& unit) const { if (param_hook_) param_hook_(unit, false); }
  std::string head_unit() const { return lm_head_ >= 0 ? "lm_head" : "embed"; }
};

// The rotary frequency scaling of model.rope_scaling and its parameters.
ops::RopeScaling rope_scaling_of(const ModelConfig& model);
// Whether layer i (0-based) of this config is an MoE layer.
bool is_moe_layer(const ModelConfig& model, const MoeConfig& moe, int64_t layer);

// Whether the chunked head (Model::set_head_chunk) saves memory on a micro-batch of `tokens`: the
// logits [tokens, vocab] it does not keep (compute bytes cb) outweigh the head weight's gradient
// [vocab, d] (accumulation bytes ab) and d hidden [tokens, d] it keeps instead. The plan asks the same.
// The LM head's backward GEMMs for logits = hidden @ head^T (tied: the embedding table [V, d]) or
// hidden @ head (untied: [d, V]): dhead = beta * dhead + the head's gradient, dhidden written.
void head_backward_gemms(const Tensor& dlogits, const Tensor& hidden, const Tensor& head, bool tied, Tensor& dhead,
                         float beta, Tensor& dhidden);

inline bool head_chunk_gains(int64_t tokens, int64_t vocab, int64_t d, size_t cb, size_t ab) {
  const auto c = static_cast<int64_t>(cb), a = static_cast<int64_t>(ab);
  return tokens * vocab * c > vocab * d * a + tokens * d * c;
}
// The MoE layer shape and options of this config (fine-grained segmentation applied).
MoeLayerConfig moe_layer_config(const ModelConfig& model, const MoeConfig& moe, ops::Activation act,
                                double out_init_std);

}  // namespace moe

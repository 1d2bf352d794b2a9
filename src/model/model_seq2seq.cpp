// The encoder-decoder (model.encoder_layers > 0): the encoder's blocks over the corrupted input,
// its final norm (the memory), the decoder's blocks over the shifted targets with cross-attention
// to the memory, the final norm, the tied or untied head and the loss. One stage, no TP.
#include "src/model/model.h"
#include "src/model/vocab_parallel.h"

namespace moe {

Tensor Model::encode(const Batch& batch, ModelSaved& saved) const {
  const auto num_encoder = static_cast<size_t>(config_.encoder_layers);
  Tensor x = run_blocks(embed(batch.inputs, Tensor(), config_.seq_len), batch, saved, 0, num_encoder);
  acquire("encoder_norm");
  Tensor memory = encoder_norm_->forward(x, saved.encoder_norm);
  release("encoder_norm");
  return memory;
}

ForwardOutput Model::forward_encoder_decoder(const Batch& batch, ModelSaved& saved) const {
  MOE_CHECK(!recompute_, "model: the encoder-decoder does not recompute activations (train.recompute = false)");
  MOE_CHECK(batch.decoder_inputs.numel() == batch.batch_size * config_.decoder_seq_len, "batch of ",
            batch.decoder_inputs.numel(), " decoder ids is not ", batch.batch_size, " sequences of ",
            config_.decoder_seq_len, " (model.decoder_seq_len)");
  saved.memory = encode(batch, saved);
  Tensor y = embed(batch.decoder_inputs, Tensor(), config_.decoder_seq_len);
  y = run_blocks(y, batch, saved, static_cast<size_t>(config_.encoder_layers), blocks_.size(), saved.memory);
  head_forward(y, saved);
  ForwardOutput out;
  if (batch.targets.defined()) {
    VocabParallelLoss loss = vocab_parallel_cross_entropy(saved.logits, batch.targets, config_.vocab_size, tp_.comm,
                                                          &batch.host_targets);
    saved.lse = loss.lse;
    out.loss = loss.loss;
    out.num_targets = loss.num_targets;
  }
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!blocks_[i]->is_moe()) continue;
    out.moe_stats.push_back(saved.blocks[i].moe.stats);
    out.moe_layer_index.push_back(static_cast<int>(layers_[i]));
    out.aux_loss += saved.blocks[i].moe.stats.aux_loss;
  }
  return out;
}

void Model::backward_encoder_decoder(const Batch& batch, const ModelSaved& saved, float loss_scale,
                                     float aux_scale) const {
  const auto num_encoder = static_cast<size_t>(config_.encoder_layers);
  Tensor dx = head_backward(batch, saved, loss_scale);
  // Every decoder layer's cross-attention adds its part of the memory's gradient.
  Tensor d_memory = Tensor::zeros(saved.memory.shape(), saved.memory.dtype(), saved.memory.device());
  for (size_t i = blocks_.size(); i-- > num_encoder;) {
    acquire(block_unit(i));
    dx = block_backward(i, batch, saved.blocks[i], dx, aux_scale, Tensor(), &d_memory);
    release(block_unit(i));
    if (grad_hook_) grad_hook_(block_unit(i));
  }
  embed_backward(batch.decoder_inputs, dx, Tensor(), config_.decoder_seq_len);
  acquire("encoder_norm");
  dx = encoder_norm_->backward(saved.encoder_norm, d_memory);
  release("encoder_norm");  // reduced with the other edge units (embed, final_norm) after the backward
  for (size_t i = num_encoder; i-- > 0;) {
    acquire(block_unit(i));
    dx = block_backward(i, batch, saved.blocks[i], dx, aux_scale, Tensor());
    release(block_unit(i));
    if (grad_hook_) grad_hook_(block_unit(i));
  }
  embed_backward(batch.inputs, dx, Tensor(), config_.seq_len);
}

Tensor Model::seq2seq_logits(const std::vector<int32_t>& encoder_tokens, const std::vector<int32_t>& decoder_tokens,
                             int64_t batch_size) const {
  MOE_CHECK(is_encoder_decoder(), "seq2seq_logits needs an encoder-decoder (model.encoder_layers > 0)");
  MOE_CHECK(parallel_.pp == 1 && !tp_.active(), "generation runs on one rank holding the whole model");
  Batch batch = make_seq2seq_batch(encoder_tokens, decoder_tokens, {}, batch_size, store_.device());
  batch.training = false;
  ModelSaved saved;
  forward(batch, saved);
  return saved.logits;
}

}  // namespace moe

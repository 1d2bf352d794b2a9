// Two micro-batches through the model together (parallel.a2a_overlap_microbatches): each MoE
// layer's all-to-all is in flight while the other micro-batch's attention runs.
//
// Forward, with attn(M, i) a block's attention half and ffn(M, i) its FFN half:
//   attn(A, 0); for each block i: ffn(A, i) || attn(B, i); ffn(B, i) || attn(A, i + 1)
// Backward mirrors it, from the last block down:
//   ffn'(A, L-1); for each block i: ffn'(B, i) || attn'(A, i); ffn'(A, i - 1) || attn'(B, i)
// ("||": the right side runs inside the MoE layer, while its all-to-all is in flight). Every
// step reads only what an earlier step made, and each parameter's gradient still adds A's part
// before B's, as forward and backward of A then B do.
#include "src/model/model.h"

namespace moe {

void Model::check_pairable() const {
  MOE_CHECK(parallel_.pp == 1 && num_chunks() == 1 && !tp_.active(), "model: micro-batch pairs "
            "(parallel.a2a_overlap_microbatches) run on one pipeline stage without tensor parallelism");
  MOE_CHECK(!recompute_, "model: micro-batch pairs (parallel.a2a_overlap_microbatches) keep every activation: "
            "train.recompute must be off");
  MOE_CHECK(!is_encoder_decoder(), "model: micro-batch pairs (parallel.a2a_overlap_microbatches) are not built for "
            "the encoder-decoder");
}

std::array<ForwardOutput, 2> Model::forward_pair(const std::array<const Batch*, 2>& batches,
                                                 const std::array<ModelSaved*, 2>& saved) const {
  check_pairable();
  ++pair_forwards_;
  const size_t n = blocks_.size();
  std::array<Tensor, 2> x, attn;
  for (int m = 0; m < 2; ++m) {
    const Batch& batch = *batches[m];
    MOE_CHECK(batch.inputs.numel() == batch.batch_size * config_.seq_len, "batch of ", batch.inputs.numel(),
              " tokens is not ", batch.batch_size, " sequences of ", config_.seq_len);
    check_host_ids(batch);
    saved[m]->doc_starts = document_starts_of(batch);
    saved[m]->blocks.assign(n, BlockSaved{});
    x[m] = embed(batch.inputs, saved[m]->doc_starts, config_.seq_len);
  }
  auto attention = [&](int m, size_t i) {
    attn[m] = blocks_[i]->attention_forward(x[m], batches[m]->batch_size, saved[m]->blocks[i], saved[m]->doc_starts);
  };
  auto ffn = [&](int m, size_t i, const std::function<void()>& meanwhile) {
    x[m] = blocks_[i]->ffn_forward(x[m], attn[m], route_inputs(*batches[m], i), saved[m]->blocks[i],
                                   batches[m]->collect_stats, meanwhile);
  };
  if (n > 0) {
    acquire(block_unit(0));
    attention(0, 0);
  }
  for (size_t i = 0; i < n; ++i) {
    ffn(0, i, [&] { attention(1, i); });
    if (i + 1 < n) acquire(block_unit(i + 1));
    ffn(1, i, [&] {
      if (i + 1 < n) attention(0, i + 1);
    });
    release(block_unit(i));
  }
  return {finish_forward(*batches[0], *saved[0], x[0], 0, n, true),
          finish_forward(*batches[1], *saved[1], x[1], 0, n, true)};
}

void Model::backward_pair(const std::array<const Batch*, 2>& batches, const std::array<const ModelSaved*, 2>& saved,
                          float loss_scale, float aux_scale) const {
  check_pairable();
  const size_t n = blocks_.size();
  std::array<Tensor, 2> dx, dh;  // the gradient of a block's output (dx) and of x + attn_out (dh)
  for (int m = 0; m < 2; ++m) dx[m] = head_backward(*batches[m], *saved[m], loss_scale);
  auto ffn = [&](int m, size_t i, const std::function<void()>& meanwhile) {
    dh[m] = blocks_[i]->ffn_backward(saved[m]->blocks[i], dx[m], aux_scale, meanwhile);
  };
  auto attention = [&](int m, size_t i) {
    dx[m] = blocks_[i]->attention_backward(saved[m]->blocks[i], dh[m], batches[m]->batch_size);
  };
  if (n > 0) {
    acquire(block_unit(n - 1));
    ffn(0, n - 1, {});
  }
  for (size_t i = n; i-- > 0;) {
    ffn(1, i, [&] { attention(0, i); });
    if (i > 0) {
      acquire(block_unit(i - 1));
      ffn(0, i - 1, [&] { attention(1, i); });
    } else {
      attention(1, i);
    }
    release(block_unit(i));
    if (grad_hook_) grad_hook_(block_unit(i));  // both micro-batches' gradients of block i are in
  }
  for (int m = 0; m < 2; ++m) embed_backward(batches[m]->inputs, dx[m], saved[m]->doc_starts, config_.seq_len);
}

}  // namespace moe

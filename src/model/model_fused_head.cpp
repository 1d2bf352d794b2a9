// The LM head and its cross-entropy over chunks of tokens, with their gradients made in the
// training forward (Model::set_head_chunk): the logits of one chunk [chunk, V] exist at a time
// instead of [B*S, V] kept until backward (1.65 GB at 16 x 1024 tokens and GPT-2's vocabulary in
// bf16). The loss scale of the backward is known before the forward (ModelSaved::head_grad_scale),
// so each chunk's logits turn into their gradient in place and are consumed at once:
//   d hidden[chunk] = d logits @ W^T (rows of the saved d_hidden),
//   d W            += hidden[chunk]^T @ d logits (the saved d_head, accumulated over the chunks).
// The cross-entropy runs forward and backward at once (cross_entropy_with_grad), then the GEMMs.
#include <algorithm>

#include "src/model/model.h"
#include "src/model/vocab_parallel.h"
#include "src/ops/ops.h"

namespace moe {

void head_backward_gemms(const Tensor& dlogits, const Tensor& hidden, const Tensor& head, bool tied, Tensor& dhead,
                         float beta, Tensor& dhidden) {
  if (tied) {
    ops::matmul(dlogits, true, hidden, false, dhead, 1.0f, beta);  // dE = d logits^T @ h
    ops::matmul(dlogits, false, head, false, dhidden);              // dh = d logits @ E
  } else {
    ops::matmul(hidden, true, dlogits, false, dhead, 1.0f, beta);  // dW = h^T @ d logits
    ops::matmul(dlogits, false, head, true, dhidden);              // dh = d logits @ W^T
  }
}

void Model::set_head_chunk(int64_t tokens) {
  MOE_CHECK(tokens >= 0, "model: head chunk of ", tokens, " tokens (train.head_chunk_tokens must be >= 0)");
  head_chunk_ = tokens;
}

bool Model::fuses_head(const ModelSaved& saved, int64_t tokens, DType compute) const {
  if (saved.head_grad_scale <= 0 || head_chunk_ <= 0 || tp_.active() || is_encoder_decoder()) return false;
  return head_chunk_gains(tokens, config_.vocab_size, config_.d_model, dtype_size(compute),
                          dtype_size(ops::accum_dtype(compute)));
}

void Model::fused_head_forward(const Tensor& x, const Batch& batch, ModelSaved& saved, ForwardOutput& out) const {
  acquire("final_norm");
  saved.hidden = final_norm_->forward(x, saved.final_norm);
  release("final_norm");
  const Tensor& hidden = saved.hidden;
  const int64_t tokens = hidden.size(0), vocab = config_.vocab_size;
  MOE_CHECK(batch.targets.numel() == tokens, "model: ", batch.targets.numel(), " targets for ", tokens, " tokens");
  const DType accum = ops::accum_dtype(hidden.dtype());
  const Device device = hidden.device();
  acquire(head_unit());
  // Tied: logits = h @ E^T with E [V, d]; untied: logits = h @ W with W [d, V].
  const bool tied = lm_head_ < 0;
  const Tensor head = store_.param(tied ? tokens_ : lm_head_);
  Tensor loss = Tensor::empty({tokens}, accum, device), lse = Tensor::empty({tokens}, accum, device);
  saved.d_hidden = Tensor::empty(hidden.shape(), hidden.dtype(), device);
  saved.d_head = Tensor::empty(head.shape(), accum, device);
  const int64_t chunk = std::min(head_chunk_, tokens);
  Tensor buffer = Tensor::empty({chunk, vocab}, hidden.dtype(), device);
  for (int64_t begin = 0; begin < tokens; begin += chunk) {
    const int64_t end = std::min(begin + chunk, tokens);
    const Tensor h = hidden.rows(begin, end), targets = batch.targets.rows(begin, end);
    Tensor logits = buffer.rows(0, end - begin), chunk_lse = lse.rows(begin, end), chunk_loss = loss.rows(begin, end);
    ops::matmul(h, false, head, tied, logits);
    ops::cross_entropy_with_grad(logits, targets, chunk_loss, chunk_lse, saved.head_grad_scale, logits);  // in place
    Tensor dh = saved.d_hidden.rows(begin, end);
    // The first chunk writes d_head, the others add.
    head_backward_gemms(logits, h, head, tied, saved.d_head, begin == 0 ? 0.0f : 1.0f, dh);
  }
  release(head_unit());
  out.loss = loss;
  out.num_targets = count_loss_targets(batch.targets, &batch.host_targets);
}

}  // namespace moe

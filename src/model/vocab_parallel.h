// Megatron-style vocabulary-parallel embedding and cross-entropy: the table embed.tokens[V, d]
// and the LM-head logits are split by vocabulary over the tensor-parallel group; full logits
// are never gathered, only per-row statistics (T numbers) cross the group.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "src/ops/ops.h"

namespace moe {

// Rank r of a group of tp holds vocabulary ids [r*V/tp, (r+1)*V/tp). A tp that is nullptr or
// of size 1 means no tensor parallelism: every function then is the unsharded op. Requires
// vocab_size % tp == 0. Sharded tensors live on the communicator's device.
ops::VocabShard vocab_shard(int64_t vocab_size, const Communicator* tp);

// ids i32[T], table_local[V/tp, d] -> out[T, d], the same on every rank of the group (each id's
// row comes from its owner, the others contribute zeros: one all-reduce).
Tensor vocab_parallel_embedding(const Tensor& ids, const Tensor& table_local, int64_t vocab_size, Communicator* tp);
// The same before the all-reduce: this rank's rows, zeros for the ids it does not own (summed
// over the group they give vocab_parallel_embedding; sequence parallelism reduce-scatters them).
Tensor vocab_parallel_embedding_partial(const Tensor& ids, const Tensor& table_local, int64_t vocab_size,
                                        const Communicator* tp);

// dout[T, d] (the same on every rank) -> dtable_local[V/tp, d] (accum) += rows of the local ids.
// No communication.
void vocab_parallel_embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable_local,
                                       int64_t vocab_size, Communicator* tp);

struct VocabParallelLoss {
  Tensor loss;              // [T] lse - logit[target] per row, 0 where target < 0 (accum, logits' device)
  int64_t num_targets = 0;  // rows with target >= 0
  Tensor lse;               // [T] global log-sum-exp, accum dtype, on the logits' device
  // The sum of `loss` read to the host (a host wait on the GPU; the trainer sums on the device).
  double loss_sum() const { return ops::sum(loss); }
};

// The targets that count in the loss (>= 0) of targets i32[T], from the host copy when given
// (its size checked against targets), else read from the device.
int64_t count_loss_targets(const Tensor& targets, const std::vector<int32_t>* host_targets);

// logits_local[T, V/tp], targets i32[T] (negative = ignored) -> the cross-entropy over the
// whole vocabulary, identical on every rank of the group. One all-gather of the local lse and
// one host all-reduce of the target logits (T numbers each). Targets >= vocab_size are an error
// (checked on the host when sharded). host_targets: the targets on the host (moe::Batch keeps
// them) so that one rank copies nothing back; null = copy them from the device.
VocabParallelLoss vocab_parallel_cross_entropy(const Tensor& logits_local, const Tensor& targets, int64_t vocab_size,
                                               Communicator* tp, const std::vector<int32_t>* host_targets = nullptr);

// logits_local[T, V/tp], lse[T] (the global lse of the forward) -> dlogits_local[T, V/tp] =
// scale * (softmax over the whole vocabulary - onehot(target)) on the local columns; zero rows
// where target < 0. No communication. The gradient is written over logits_local (in place: the
// logits are consumed, no second [T, V/tp] buffer) and returned.
Tensor vocab_parallel_cross_entropy_backward(Tensor logits_local, const Tensor& targets, const Tensor& lse,
                                             float scale, int64_t vocab_size, Communicator* tp);

// logits_local[T, V/tp], host_targets [T] (negative = ignored) -> how many counted rows predict
// their target: its logit is the largest over the whole vocabulary (a tie counts as correct).
// Copies the counted rows (only) to the host; one host all-reduce of 2 numbers per counted row
// when sharded. The same on every rank of the group.
int64_t vocab_parallel_correct(const Tensor& logits_local, const std::vector<int32_t>& host_targets,
                               int64_t vocab_size, Communicator* tp);

}  // namespace moe

// CPU reference softmax cross-entropy over a vocabulary, forward and backward.
// Raw pointers only; negative targets are ignored (zero loss, zero gradient row).
#pragma once

#include <cstdint>

namespace moe::cpu {

// Vocabulary sharding (tensor parallelism): the logits hold columns [vocab_start, vocab_start +
// vocab) of a vocabulary of vocab_full ids. vocab_full == 0 means unsharded (vocab_start 0).

// logits[T,vocab], targets i32[T] -> lse[T] = log sum exp of each local row (also for ignored
// rows); loss[T] = 0 where target < 0, lse - logits[target - vocab_start] where the target is
// local, lse where another shard holds it (so lse - loss is the local target logit).
// Targets >= vocab_full (>= vocab when unsharded) are an error.
template <typename T>
void cross_entropy_forward(const T* logits, const int32_t* targets, T* loss, T* lse, int64_t rows, int64_t vocab,
                           int64_t vocab_start, int64_t vocab_full);

// logits[T,vocab], targets i32[T], lse[T] -> dlogits[T,vocab] = scale * (exp(logits - lse) -
// onehot(target - vocab_start)), the onehot only where the target is local; zero rows where
// target < 0 (written). With sharding, lse is the log-sum-exp over the whole vocabulary.
template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, double scale, T* dlogits,
                            int64_t rows, int64_t vocab, int64_t vocab_start, int64_t vocab_full);

}  // namespace moe::cpu

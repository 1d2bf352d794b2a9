// CPU reference softmax cross-entropy over a vocabulary, forward and backward.
// Raw pointers only; negative targets are ignored (zero loss, zero gradient row).
#pragma once

#include <cstdint>

namespace moe::cpu {

// logits[T,V], targets i32[T] -> loss[T] = lse - logits[target] (0 where target < 0),
// lse[T] = log sum exp of each row (also for ignored rows). Targets >= V are an error.
template <typename T>
void cross_entropy_forward(const T* logits, const int32_t* targets, T* loss, T* lse, int64_t rows, int64_t vocab);

// logits[T,V], targets i32[T], lse[T] -> dlogits[T,V] = scale * (softmax - onehot(target)),
// zero rows where target < 0 (written)
template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, double scale, T* dlogits,
                            int64_t rows, int64_t vocab);

}  // namespace moe::cpu

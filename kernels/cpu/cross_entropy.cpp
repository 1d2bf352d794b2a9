// CPU reference softmax cross-entropy: a max-shifted log-sum-exp in double per row; backward
// rebuilds the softmax from the saved lse. Optionally over one shard of the vocabulary.
#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

// The local column of the target, or -1 when it is ignored or another shard holds it.
int64_t local_target(int32_t target, int64_t row, int64_t vocab, int64_t vocab_start, int64_t vocab_full) {
  const int64_t bound = vocab_full > 0 ? vocab_full : vocab;
  MOE_CHECK(target < bound, "cross-entropy: target ", target, " of row ", row, " is outside the vocabulary [0,", bound,
            ")");
  if (target < 0) return -1;
  const int64_t col = static_cast<int64_t>(target) - vocab_start;
  return col >= 0 && col < vocab ? col : -1;
}

}  // namespace

template <typename T>
void cross_entropy_forward(const T* logits, const int32_t* targets, T* loss, T* lse, int64_t rows, int64_t vocab,
                           int64_t vocab_start, int64_t vocab_full) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t col = local_target(targets[r], r, vocab, vocab_start, vocab_full);
    const T* lr = logits + r * vocab;
    double mx = vocab > 0 ? static_cast<double>(*std::max_element(lr, lr + vocab)) : 0.0;
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(lr[i]) - mx);
    double row_lse = mx + std::log(sum);
    lse[r] = static_cast<T>(row_lse);
    if (targets[r] < 0) {
      loss[r] = T(0);
    } else {
      loss[r] = static_cast<T>(col < 0 ? row_lse : row_lse - static_cast<double>(lr[col]));
    }
  }
}

template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, double scale, T* dlogits,
                            int64_t rows, int64_t vocab, int64_t vocab_start, int64_t vocab_full) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t col = local_target(targets[r], r, vocab, vocab_start, vocab_full);
    T* dr = dlogits + r * vocab;
    if (targets[r] < 0) {
      std::fill(dr, dr + vocab, T(0));
      continue;
    }
    const T* lr = logits + r * vocab;
    const double row_lse = lse[r];
    for (int64_t i = 0; i < vocab; ++i) {
      double p = std::exp(static_cast<double>(lr[i]) - row_lse);
      dr[i] = static_cast<T>(scale * (i == col ? p - 1.0 : p));
    }
  }
}

template void cross_entropy_forward<float>(const float*, const int32_t*, float*, float*, int64_t, int64_t, int64_t,
                                           int64_t);
template void cross_entropy_forward<double>(const double*, const int32_t*, double*, double*, int64_t, int64_t,
                                            int64_t, int64_t);
template void cross_entropy_backward<float>(const float*, const int32_t*, const float*, double, float*, int64_t,
                                            int64_t, int64_t, int64_t);
template void cross_entropy_backward<double>(const double*, const int32_t*, const double*, double, double*, int64_t,
                                             int64_t, int64_t, int64_t);

}  // namespace moe::cpu

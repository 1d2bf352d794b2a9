// CPU reference softmax cross-entropy: a max-shifted log-sum-exp in double per row; backward
// rebuilds the softmax from the saved lse.
#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

void check_target(int32_t target, int64_t row, int64_t vocab) {
  MOE_CHECK(target < vocab, "cross-entropy: target ", target, " of row ", row, " is outside the vocabulary [0,", vocab,
            ")");
}

}  // namespace

template <typename T>
void cross_entropy_forward(const T* logits, const int32_t* targets, T* loss, T* lse, int64_t rows, int64_t vocab) {
  for (int64_t r = 0; r < rows; ++r) {
    check_target(targets[r], r, vocab);
    const T* lr = logits + r * vocab;
    double mx = vocab > 0 ? static_cast<double>(*std::max_element(lr, lr + vocab)) : 0.0;
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(lr[i]) - mx);
    double row_lse = mx + std::log(sum);
    lse[r] = static_cast<T>(row_lse);
    loss[r] = targets[r] < 0 ? T(0) : static_cast<T>(row_lse - static_cast<double>(lr[targets[r]]));
  }
}

template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, double scale, T* dlogits,
                            int64_t rows, int64_t vocab) {
  for (int64_t r = 0; r < rows; ++r) {
    check_target(targets[r], r, vocab);
    T* dr = dlogits + r * vocab;
    if (targets[r] < 0) {
      std::fill(dr, dr + vocab, T(0));
      continue;
    }
    const T* lr = logits + r * vocab;
    const double row_lse = lse[r];
    const int64_t target = targets[r];
    for (int64_t i = 0; i < vocab; ++i) {
      double p = std::exp(static_cast<double>(lr[i]) - row_lse);
      dr[i] = static_cast<T>(scale * (i == target ? p - 1.0 : p));
    }
  }
}

template void cross_entropy_forward<float>(const float*, const int32_t*, float*, float*, int64_t, int64_t);
template void cross_entropy_forward<double>(const double*, const int32_t*, double*, double*, int64_t, int64_t);
template void cross_entropy_backward<float>(const float*, const int32_t*, const float*, double, float*, int64_t,
                                            int64_t);
template void cross_entropy_backward<double>(const double*, const int32_t*, const double*, double, double*, int64_t,
                                             int64_t);

}  // namespace moe::cpu

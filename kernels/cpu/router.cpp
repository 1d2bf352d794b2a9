// CPU reference softmax top-k router. Selection is a deterministic partial sort (probability
// descending, index ascending); the softmax and all backward sums run in double.
#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

template <typename T>
void softmax_topk_forward(const T* logits, T* probs, int32_t* ids, T* weights, int64_t num_tokens, int64_t num_experts,
                          int64_t k, bool renormalize) {
  const int64_t E = num_experts;
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* lt = logits + t * E;
    T* pt = probs + t * E;
    double mx = static_cast<double>(*std::max_element(lt, lt + E));
    double denom = 0;
    for (int64_t i = 0; i < E; ++i) denom += std::exp(static_cast<double>(lt[i]) - mx);
    for (int64_t i = 0; i < E; ++i) pt[i] = static_cast<T>(std::exp(static_cast<double>(lt[i]) - mx) / denom);
    // Compare the stored probabilities so equal logits tie exactly and the lower index wins.
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [pt](int32_t a, int32_t b) { return pt[a] > pt[b] || (pt[a] == pt[b] && a < b); });
    double selected = 0;
    for (int64_t s = 0; s < k; ++s) selected += static_cast<double>(pt[order[static_cast<size_t>(s)]]);
    for (int64_t s = 0; s < k; ++s) {
      int32_t e = order[static_cast<size_t>(s)];
      ids[t * k + s] = e;
      weights[t * k + s] = renormalize ? static_cast<T>(static_cast<double>(pt[e]) / selected) : pt[e];
    }
  }
}

// Renormalised: w_s = p_s / P with P = sum of selected p, so dL/dp_r += (dw_r - sum_s dw_s w_s) / P
// for a selected r. Then dlogits = p * (dprobs - sum_i p_i dprobs_i) (softmax Jacobian).
template <typename T>
void softmax_topk_backward(const T* probs, const int32_t* ids, const T* dweights, const T* expert_grad, T* dlogits,
                           int64_t num_tokens, int64_t num_experts, int64_t k, bool renormalize) {
  const int64_t E = num_experts;
  std::vector<double> dprobs(static_cast<size_t>(E));
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* pt = probs + t * E;
    const int32_t* it = ids + t * k;
    const T* dwt = dweights + t * k;
    for (int64_t i = 0; i < E; ++i) dprobs[static_cast<size_t>(i)] = expert_grad[i];
    for (int64_t s = 0; s < k; ++s) {
      MOE_CHECK(it[s] >= 0 && it[s] < E, "router backward: expert id ", it[s], " of token ", t, " is outside [0,", E,
                ")");
    }
    if (renormalize) {
      double selected = 0, dw_dot_w = 0;
      for (int64_t s = 0; s < k; ++s) selected += static_cast<double>(pt[it[s]]);
      for (int64_t s = 0; s < k; ++s) dw_dot_w += static_cast<double>(dwt[s]) * pt[it[s]] / selected;
      for (int64_t s = 0; s < k; ++s) dprobs[static_cast<size_t>(it[s])] += (dwt[s] - dw_dot_w) / selected;
    } else {
      for (int64_t s = 0; s < k; ++s) dprobs[static_cast<size_t>(it[s])] += dwt[s];
    }
    double p_dot = 0;
    for (int64_t i = 0; i < E; ++i) p_dot += static_cast<double>(pt[i]) * dprobs[static_cast<size_t>(i)];
    T* dt = dlogits + t * E;
    for (int64_t i = 0; i < E; ++i) dt[i] = static_cast<T>(pt[i] * (dprobs[static_cast<size_t>(i)] - p_dot));
  }
}

template void softmax_topk_forward<float>(const float*, float*, int32_t*, float*, int64_t, int64_t, int64_t, bool);
template void softmax_topk_forward<double>(const double*, double*, int32_t*, double*, int64_t, int64_t, int64_t, bool);
template void softmax_topk_backward<float>(const float*, const int32_t*, const float*, const float*, float*, int64_t,
                                           int64_t, int64_t, bool);
template void softmax_topk_backward<double>(const double*, const int32_t*, const double*, const double*, double*,
                                            int64_t, int64_t, int64_t, bool);

}  // namespace moe::cpu

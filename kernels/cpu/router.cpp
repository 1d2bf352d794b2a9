// CPU reference top-k router. Selection is a deterministic partial sort on keys stored in T
// (key descending, index ascending), so equal logits tie exactly; softmax, sigmoid and all
// backward sums run in double.
#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

using kernels::ScoreFunction;
using kernels::TopKOptions;

namespace {

// Stable in both tails: never evaluates exp of a large positive number.
double sigmoid_of(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

template <typename T>
void score_row(const T* lt, T* st, int64_t num_experts, bool sigmoid) {
  if (sigmoid) {
    for (int64_t i = 0; i < num_experts; ++i) st[i] = static_cast<T>(sigmoid_of(static_cast<double>(lt[i])));
    return;
  }
  const double mx = static_cast<double>(*std::max_element(lt, lt + num_experts));
  double denom = 0;
  for (int64_t i = 0; i < num_experts; ++i) denom += std::exp(static_cast<double>(lt[i]) - mx);
  for (int64_t i = 0; i < num_experts; ++i) st[i] = static_cast<T>(std::exp(static_cast<double>(lt[i]) - mx) / denom);
}

// Candidates of one token: every expert, or those of its top_groups groups (ranked by the
// group's largest key, ties to the lower group), in ascending expert order.
template <typename T>
void allowed_experts(const std::vector<T>& key, const TopKOptions& o, int64_t num_experts, std::vector<int32_t>& out,
                     std::vector<int32_t>& group_order, std::vector<T>& group_max) {
  out.clear();
  if (o.num_groups == 0) {
    for (int64_t i = 0; i < num_experts; ++i) out.push_back(static_cast<int32_t>(i));
    return;
  }
  const int64_t size = num_experts / o.num_groups;
  for (int64_t g = 0; g < o.num_groups; ++g) {
    const auto first = key.begin() + g * size;
    group_max[static_cast<size_t>(g)] = *std::max_element(first, first + size);
  }
  std::iota(group_order.begin(), group_order.end(), 0);
  std::partial_sort(group_order.begin(), group_order.begin() + o.top_groups, group_order.end(),
                    [&](int32_t a, int32_t b) {
                      const T ma = group_max[static_cast<size_t>(a)], mb = group_max[static_cast<size_t>(b)];
                      return ma > mb || (ma == mb && a < b);
                    });
  std::sort(group_order.begin(), group_order.begin() + o.top_groups);
  for (int64_t j = 0; j < o.top_groups; ++j) {
    const int64_t g = group_order[static_cast<size_t>(j)];
    for (int64_t i = g * size; i < (g + 1) * size; ++i) out.push_back(static_cast<int32_t>(i));
  }
}

}  // namespace

template <typename T>
void router_topk_forward(const T* logits, const T* bias, T* scores, int32_t* ids, T* weights, int64_t tokens,
                         int64_t num_experts, const TopKOptions& o, T* score_sums, int64_t* counts) {
  const int64_t E = num_experts, k = o.k;
  std::vector<double> sums(score_sums ? static_cast<size_t>(E) : 0, 0.0);
  if (counts) std::fill(counts, counts + E, int64_t{0});
  std::vector<T> key(static_cast<size_t>(E));
  std::vector<int32_t> order, group_order(static_cast<size_t>(std::max<int64_t>(o.num_groups, 1)));
  std::vector<T> group_max(group_order.size());
  order.reserve(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    const T* lt = logits + t * E;
    T* st = scores + t * E;
    score_row(lt, st, E, o.score == ScoreFunction::sigmoid);
    for (int64_t i = 0; i < E; ++i) key[static_cast<size_t>(i)] = bias ? static_cast<T>(st[i] + bias[i]) : st[i];
    allowed_experts(key, o, E, order, group_order, group_max);
    MOE_CHECK(static_cast<int64_t>(order.size()) >= k, "router: top-k ", k, " exceeds the ", order.size(),
              " experts of the allowed groups");
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      const T ka = key[static_cast<size_t>(a)], kb = key[static_cast<size_t>(b)];
      return ka > kb || (ka == kb && a < b);
    });
    int32_t* it = ids + t * k;
    T* wt = weights + t * k;
    for (int64_t s = 0; s < k; ++s) it[s] = order[static_cast<size_t>(s)];
    if (score_sums)
      for (int64_t i = 0; i < E; ++i) sums[static_cast<size_t>(i)] += static_cast<double>(st[i]);
    if (counts)
      for (int64_t s = 0; s < k; ++s) ++counts[it[s]];
    if (o.softmax_after_topk) {
      double mx = -INFINITY, denom = 0;
      for (int64_t s = 0; s < k; ++s) mx = std::max(mx, static_cast<double>(lt[it[s]]));
      for (int64_t s = 0; s < k; ++s) denom += std::exp(static_cast<double>(lt[it[s]]) - mx);
      for (int64_t s = 0; s < k; ++s) wt[s] = static_cast<T>(std::exp(static_cast<double>(lt[it[s]]) - mx) / denom);
    } else if (kernels::renormalizes(o)) {
      double selected = 0;
      for (int64_t s = 0; s < k; ++s) selected += static_cast<double>(st[it[s]]);
      for (int64_t s = 0; s < k; ++s) wt[s] = static_cast<T>(static_cast<double>(st[it[s]]) / selected);
    } else {
      for (int64_t s = 0; s < k; ++s) wt[s] = st[it[s]];
    }
  }
  if (score_sums)
    for (int64_t i = 0; i < E; ++i) score_sums[i] = static_cast<T>(sums[static_cast<size_t>(i)]);
}

// Through the weights into dscores (or, Mixtral, straight into the selected logits):
//   renormalised w_s = p_s / P: dp_r += (dw_r - sum_s dw_s w_s) / P for a selected r;
//   softmax over selected logits: dl_r += w_r (dw_r - sum_s dw_s w_s).
// Then through the scores: softmax dl = p (dp - p.dp); sigmoid dl = dp sigmoid(x) sigmoid(-x).
template <typename T>
void router_topk_backward(const T* logits, const T* scores, const int32_t* ids, const T* weights, const T* dweights,
                          const T* dscores, T* dlogits, int64_t tokens, int64_t num_experts,
                          const TopKOptions& o, const T* dscore_row) {
  const int64_t E = num_experts, k = o.k;
  std::vector<double> dp(static_cast<size_t>(E)), direct(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    const T* lt = logits + t * E;
    const T* pt = scores + t * E;
    const int32_t* it = ids + t * k;
    const T* wt = weights + t * k;
    const T* dwt = dweights + t * k;
    for (int64_t s = 0; s < k; ++s) {
      MOE_CHECK(it[s] >= 0 && it[s] < E, "router backward: expert id ", it[s], " of token ", t, " is outside [0,", E,
                ")");
    }
    for (int64_t i = 0; i < E; ++i) {
      dp[static_cast<size_t>(i)] = (dscores ? static_cast<double>(dscores[t * E + i]) : 0.0) +
                                   (dscore_row ? static_cast<double>(dscore_row[i]) : 0.0);
    }
    std::fill(direct.begin(), direct.end(), 0.0);
    if (o.softmax_after_topk) {
      double dw_dot_w = 0;
      for (int64_t s = 0; s < k; ++s) dw_dot_w += static_cast<double>(dwt[s]) * static_cast<double>(wt[s]);
      for (int64_t s = 0; s < k; ++s) direct[static_cast<size_t>(it[s])] = wt[s] * (dwt[s] - dw_dot_w);
    } else if (kernels::renormalizes(o)) {
      double selected = 0, dw_dot_w = 0;
      for (int64_t s = 0; s < k; ++s) selected += static_cast<double>(pt[it[s]]);
      for (int64_t s = 0; s < k; ++s) dw_dot_w += static_cast<double>(dwt[s]) * pt[it[s]] / selected;
      for (int64_t s = 0; s < k; ++s) dp[static_cast<size_t>(it[s])] += (dwt[s] - dw_dot_w) / selected;
    } else {
      for (int64_t s = 0; s < k; ++s) dp[static_cast<size_t>(it[s])] += dwt[s];
    }
    T* dt = dlogits + t * E;
    if (o.score == ScoreFunction::sigmoid) {
      for (int64_t i = 0; i < E; ++i) {
        const double x = static_cast<double>(lt[i]);
        dt[i] = static_cast<T>(dp[static_cast<size_t>(i)] * sigmoid_of(x) * sigmoid_of(-x) +
                               direct[static_cast<size_t>(i)]);
      }
    } else {
      double p_dot = 0;
      for (int64_t i = 0; i < E; ++i) p_dot += static_cast<double>(pt[i]) * dp[static_cast<size_t>(i)];
      for (int64_t i = 0; i < E; ++i) {
        dt[i] = static_cast<T>(pt[i] * (dp[static_cast<size_t>(i)] - p_dot) + direct[static_cast<size_t>(i)]);
      }
    }
  }
}

template void router_topk_forward<float>(const float*, const float*, float*, int32_t*, float*, int64_t, int64_t,
                                         const TopKOptions&, float*, int64_t*);
template void router_topk_forward<double>(const double*, const double*, double*, int32_t*, double*, int64_t, int64_t,
                                          const TopKOptions&, double*, int64_t*);
template void router_topk_backward<float>(const float*, const float*, const int32_t*, const float*, const float*,
                                          const float*, float*, int64_t, int64_t, const TopKOptions&, const float*);
template void router_topk_backward<double>(const double*, const double*, const int32_t*, const double*,
                                           const double*, const double*, double*, int64_t, int64_t,
                                           const TopKOptions&, const double*);

}  // namespace moe::cpu

// CPU reference per-expert selections: a partial sort per expert with an explicit total order
// (value descending, then position), so results are unique and match the GPU bit for bit.
#include "kernels/cpu/capacity.h"

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

template <typename T>
void expert_choice_forward(const T* scores, int32_t* ids, T* weights, int64_t tokens, int64_t num_experts,
                           int64_t capacity) {
  const int64_t E = num_experts, taken = std::min(capacity, tokens);
  for (int64_t i = 0; i < tokens * E; ++i) {
    ids[i] = -1;
    weights[i] = T(0);
  }
  std::vector<int32_t> order(static_cast<size_t>(tokens));
  for (int64_t e = 0; e < E; ++e) {
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + taken, order.end(), [&](int32_t a, int32_t b) {
      const T sa = scores[a * E + e], sb = scores[b * E + e];
      return sa > sb || (sa == sb && a < b);
    });
    for (int64_t j = 0; j < taken; ++j) {
      const int64_t i = order[static_cast<size_t>(j)] * E + e;
      ids[i] = static_cast<int32_t>(e);
      weights[i] = scores[i];
    }
  }
}

template <typename T>
void expert_choice_backward(const int32_t* ids, const T* dweights, T* dscores, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] >= 0) dscores[i] += dweights[i];
  }
}

template <typename T>
int64_t apply_capacity(int32_t* ids, T* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                       kernels::DropOrder order) {
  const bool by_probability = order == kernels::DropOrder::by_probability;
  const int64_t num_slots = tokens * k;
  std::vector<int64_t> count(static_cast<size_t>(num_experts), 0);
  for (int64_t i = 0; i < num_slots; ++i) {
    MOE_CHECK(ids[i] >= -1 && ids[i] < num_experts, "apply_capacity: expert id ", ids[i], " of token ", i / k,
              " (slot ", i % k, ") is outside [0,", num_experts, ")");
    if (ids[i] >= 0) ++count[static_cast<size_t>(ids[i])];
  }
  // Each expert's slots, in priority order for by_position (slot-major, then token); for
  // by_probability in slot order (token, then slot), which breaks the weight ties below.
  std::vector<int64_t> begin(static_cast<size_t>(num_experts) + 1, 0);
  for (int64_t e = 0; e < num_experts; ++e) {
    begin[static_cast<size_t>(e) + 1] = begin[static_cast<size_t>(e)] + count[static_cast<size_t>(e)];
  }
  std::vector<int64_t> next(begin.begin(), begin.end() - 1), slots(static_cast<size_t>(begin.back()));
  auto visit = [&](int64_t i) {
    if (ids[i] >= 0) slots[static_cast<size_t>(next[static_cast<size_t>(ids[i])]++)] = i;
  };
  if (by_probability) {
    for (int64_t i = 0; i < num_slots; ++i) visit(i);
  } else {
    for (int64_t s = 0; s < k; ++s) {
      for (int64_t t = 0; t < tokens; ++t) visit(t * k + s);
    }
  }
  int64_t dropped = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const auto first = slots.begin() + begin[static_cast<size_t>(e)];
    const auto last = slots.begin() + begin[static_cast<size_t>(e) + 1];
    if (last - first <= capacity) continue;
    if (by_probability) {
      std::partial_sort(first, first + capacity, last, [&](int64_t a, int64_t b) {
        return weights[a] > weights[b] || (weights[a] == weights[b] && a < b);
      });
    }
    for (auto it = first + capacity; it != last; ++it) {
      ids[*it] = -1;
      weights[*it] = T(0);
      ++dropped;
    }
  }
  return dropped;
}

template void expert_choice_forward<float>(const float*, int32_t*, float*, int64_t, int64_t, int64_t);
template void expert_choice_forward<double>(const double*, int32_t*, double*, int64_t, int64_t, int64_t);
template void expert_choice_backward<float>(const int32_t*, const float*, float*, int64_t);
template void expert_choice_backward<double>(const int32_t*, const double*, double*, int64_t);
template int64_t apply_capacity<float>(int32_t*, float*, int64_t, int64_t, int64_t, int64_t, kernels::DropOrder);
template int64_t apply_capacity<double>(int32_t*, double*, int64_t, int64_t, int64_t, int64_t, kernels::DropOrder);

}  // namespace moe::cpu

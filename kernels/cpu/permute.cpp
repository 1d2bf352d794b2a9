// CPU reference expert sort (counting sort, stable by construction) and the weighted combine.
// Slot rows are range-checked because they come from routing code outside this file; -1 is a
// dropped slot.
#include "kernels/cpu/permute.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

void check_slot_row(int32_t row, int64_t slot, int64_t num_rows, const char* op = "moe_combine") {
  MOE_CHECK(row >= -1 && row < num_rows, op, ": slot ", slot, " points at row ", row, ", outside [0,", num_rows, ")");
}

}  // namespace

void moe_sort_by_expert(const int32_t* ids, int64_t num_tokens, int64_t k, int64_t num_experts, int32_t* sorted_tokens,
                        int32_t* slot_pos, int64_t* counts) {
  const int64_t num_slots = num_tokens * k;
  std::fill(counts, counts + num_experts, int64_t{0});
  for (int64_t i = 0; i < num_slots; ++i) {
    MOE_CHECK(ids[i] >= -1 && ids[i] < num_experts, "moe_sort_by_expert: expert id ", ids[i], " of token ", i / k,
              " (slot ", i % k, ") is outside [0,", num_experts, ")");
    if (ids[i] >= 0) ++counts[ids[i]];
  }
  // Visiting slots in (token, slot) order and appending to each expert's range keeps the sort stable.
  std::vector<int64_t> next(static_cast<size_t>(num_experts), 0);
  for (int64_t e = 1; e < num_experts; ++e)
    next[static_cast<size_t>(e)] = next[static_cast<size_t>(e - 1)] + counts[e - 1];
  for (int64_t i = 0; i < num_slots; ++i) {
    if (ids[i] < 0) {
      slot_pos[i] = -1;
      continue;
    }
    int64_t row = next[static_cast<size_t>(ids[i])]++;
    sorted_tokens[row] = static_cast<int32_t>(i / k);
    slot_pos[i] = static_cast<int32_t>(row);
  }
  const int64_t used = num_experts > 0 ? next[static_cast<size_t>(num_experts - 1)] : 0;
  std::fill(sorted_tokens + used, sorted_tokens + num_slots, -1);
}

template <typename T>
void moe_combine_forward(const T* y_sorted, const int32_t* slot_pos, const T* weights, T* out, int64_t num_tokens,
                         int64_t k, int64_t dim, int64_t num_rows, const T* add_a, const T* add_b) {
  std::vector<double> acc(static_cast<size_t>(dim));
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t c = 0; c < dim; ++c) {
      acc[static_cast<size_t>(c)] = (add_a ? static_cast<double>(add_a[t * dim + c]) : 0.0) +
                                    (add_b ? static_cast<double>(add_b[t * dim + c]) : 0.0);
    }
    for (int64_t s = 0; s < k; ++s) {
      const int32_t row = slot_pos[t * k + s];
      check_slot_row(row, t * k + s, num_rows);
      if (row < 0) continue;
      const double w = weights != nullptr ? static_cast<double>(weights[t * k + s]) : 1.0;
      const T* y = y_sorted + static_cast<int64_t>(row) * dim;
      for (int64_t c = 0; c < dim; ++c) acc[static_cast<size_t>(c)] += w * static_cast<double>(y[c]);
    }
    T* ot = out + t * dim;
    for (int64_t c = 0; c < dim; ++c) ot[c] = static_cast<T>(acc[static_cast<size_t>(c)]);
  }
}

template <typename T>
void moe_combine_backward(const T* y_sorted, const int32_t* slot_pos, const T* weights, const T* dout, T* dy_sorted,
                          T* dweights, int64_t num_tokens, int64_t k, int64_t dim, int64_t num_rows) {
  std::fill(dy_sorted, dy_sorted + num_rows * dim, T(0));
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* g = dout + t * dim;
    for (int64_t s = 0; s < k; ++s) {
      const int32_t row = slot_pos[t * k + s];
      check_slot_row(row, t * k + s, num_rows);
      if (row < 0) {
        dweights[t * k + s] = T(0);
        continue;
      }
      const T* y = y_sorted + static_cast<int64_t>(row) * dim;
      T* dy = dy_sorted + static_cast<int64_t>(row) * dim;
      const T w = weights[t * k + s];
      double dot = 0;
      for (int64_t c = 0; c < dim; ++c) {
        dot += static_cast<double>(g[c]) * static_cast<double>(y[c]);
        dy[c] += w * g[c];
      }
      dweights[t * k + s] = static_cast<T>(dot);
    }
  }
}

template <typename T>
void moe_combine_backward_unweighted(const int32_t* slot_pos, const T* weights, const T* dout, T* dy_sorted,
                                     T* row_weights, int64_t num_tokens, int64_t k, int64_t dim, int64_t num_rows) {
  std::fill(dy_sorted, dy_sorted + num_rows * dim, T(0));
  std::fill(row_weights, row_weights + num_rows, T(0));
  for (int64_t n = 0; n < num_tokens * k; ++n) {
    const int32_t row = slot_pos[n];
    check_slot_row(row, n, num_rows);
    if (row < 0) continue;
    std::copy(dout + (n / k) * dim, dout + (n / k + 1) * dim, dy_sorted + static_cast<int64_t>(row) * dim);
    row_weights[row] = weights[n];
  }
}

template <typename T>
void moe_scatter_rows(const T* x, const int32_t* slot_pos, T* x_sorted, int64_t num_tokens, int64_t k, int64_t dim,
                      int64_t num_rows) {
  std::fill(x_sorted, x_sorted + num_rows * dim, T(0));
  for (int64_t n = 0; n < num_tokens * k; ++n) {
    const int32_t row = slot_pos[n];
    check_slot_row(row, n, num_rows, "moe_scatter_rows");
    if (row >= 0) std::copy(x + (n / k) * dim, x + (n / k + 1) * dim, x_sorted + static_cast<int64_t>(row) * dim);
  }
}

template <typename T>
void moe_gather_slots(const T* row_values, const int32_t* slot_pos, T* slot_values, int64_t num_slots,
                      int64_t num_rows) {
  for (int64_t n = 0; n < num_slots; ++n) {
    check_slot_row(slot_pos[n], n, num_rows);
    slot_values[n] = slot_pos[n] >= 0 ? row_values[slot_pos[n]] : T(0);
  }
}

template void moe_combine_backward_unweighted<float>(const int32_t*, const float*, const float*, float*, float*,
                                                     int64_t, int64_t, int64_t, int64_t);
template void moe_combine_backward_unweighted<double>(const int32_t*, const double*, const double*, double*, double*,
                                                      int64_t, int64_t, int64_t, int64_t);
template void moe_scatter_rows<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t, int64_t);
template void moe_scatter_rows<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t, int64_t);
template void moe_scatter_rows<int32_t>(const int32_t*, const int32_t*, int32_t*, int64_t, int64_t, int64_t, int64_t);
template void moe_gather_slots<float>(const float*, const int32_t*, float*, int64_t, int64_t);
template void moe_gather_slots<double>(const double*, const int32_t*, double*, int64_t, int64_t);
template void moe_combine_forward<float>(const float*, const int32_t*, const float*, float*, int64_t, int64_t, int64_t,
                                         int64_t, const float*, const float*);
template void moe_combine_forward<double>(const double*, const int32_t*, const double*, double*, int64_t, int64_t,
                                          int64_t, int64_t, const double*, const double*);
template void moe_combine_backward<float>(const float*, const int32_t*, const float*, const float*, float*, float*,
                                          int64_t, int64_t, int64_t, int64_t);
template void moe_combine_backward<double>(const double*, const int32_t*, const double*, const double*, double*,
                                           double*, int64_t, int64_t, int64_t, int64_t);

}  // namespace moe::cpu

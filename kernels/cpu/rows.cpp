// CPU reference row gather / scatter-add. Scatter runs in index order, so repeated indices
// add up deterministically.
#include "kernels/cpu/rows.h"

#include <algorithm>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

void check_row(int32_t row, int64_t i, int64_t num_rows, const char* op) {
  MOE_CHECK(row >= 0 && row < num_rows, op, ": index ", row, " at position ", i, " is outside the rows [0,", num_rows,
            ")");
}

}  // namespace

template <typename T>
void gather_rows(const T* src, const int32_t* index, T* dst, int64_t num_index, int64_t src_rows, int64_t cols) {
  for (int64_t i = 0; i < num_index; ++i) {
    if (index[i] == -1) {  // no row: zeros
      std::fill(dst + i * cols, dst + (i + 1) * cols, T(0));
      continue;
    }
    check_row(index[i], i, src_rows, "gather_rows");
    const T* row = src + static_cast<int64_t>(index[i]) * cols;
    std::copy(row, row + cols, dst + i * cols);
  }
}

template <typename T>
void scatter_add_rows(const T* src, const int32_t* index, T* dst, int64_t num_index, int64_t dst_rows, int64_t cols) {
  for (int64_t i = 0; i < num_index; ++i) {
    check_row(index[i], i, dst_rows, "scatter_add_rows");
    T* row = dst + static_cast<int64_t>(index[i]) * cols;
    const T* s = src + i * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] += s[c];
  }
}

template void gather_rows<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void gather_rows<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);
template void gather_rows<int32_t>(const int32_t*, const int32_t*, int32_t*, int64_t, int64_t, int64_t);
template void scatter_add_rows<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void scatter_add_rows<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);
template void scatter_add_rows<int32_t>(const int32_t*, const int32_t*, int32_t*, int64_t, int64_t, int64_t);

}  // namespace moe::cpu

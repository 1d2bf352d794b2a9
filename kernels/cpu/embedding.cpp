// CPU reference token embedding (forward lookup, backward scatter-add).
// Ids are range-checked here because a bad id would otherwise read out of bounds.
#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

void check_id(int32_t id, int64_t token, int64_t vocab) {
  MOE_CHECK(id >= 0 && id < vocab, "embedding: token id ", id, " at position ", token, " is outside the vocabulary [0,",
            vocab, ")");
}

}  // namespace

template <typename T>
void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t num_tokens, int64_t vocab, int64_t dim) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    check_id(ids[t], t, vocab);
    const T* row = table + static_cast<int64_t>(ids[t]) * dim;
    std::copy(row, row + dim, out + t * dim);
  }
}

template <typename T>
void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t num_tokens, int64_t vocab, int64_t dim) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    check_id(ids[t], t, vocab);
    T* row = dtable + static_cast<int64_t>(ids[t]) * dim;
    const T* g = dout + t * dim;
    for (int64_t i = 0; i < dim; ++i) row[i] += g[i];
  }
}

template void embedding_forward<float>(const int32_t*, const float*, float*, int64_t, int64_t, int64_t);
template void embedding_forward<double>(const int32_t*, const double*, double*, int64_t, int64_t, int64_t);
template void embedding_backward<float>(const int32_t*, const float*, float*, int64_t, int64_t, int64_t);
template void embedding_backward<double>(const int32_t*, const double*, double*, int64_t, int64_t, int64_t);

}  // namespace moe::cpu

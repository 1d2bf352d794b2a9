// CPU reference token embedding (forward lookup, backward scatter-add), optionally over one
// shard of the vocabulary. Ids are range-checked here because a bad id would otherwise read
// out of bounds.
#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "src/util/check.h"

namespace moe::cpu {

namespace {

void check_id(int32_t id, int64_t token, int64_t vocab) {
  MOE_CHECK(id >= 0 && id < vocab, "embedding: token id ", id, " at position ", token, " is outside the vocabulary [0,",
            vocab, ")");
}

// The local row of id, or -1 when another shard holds it (after the range check).
int64_t local_row(int32_t id, int64_t token, int64_t vocab, int64_t vocab_start, int64_t vocab_full) {
  check_id(id, token, vocab_full > 0 ? vocab_full : vocab);
  const int64_t row = static_cast<int64_t>(id) - vocab_start;
  return row >= 0 && row < vocab ? row : -1;
}

}  // namespace

template <typename T>
void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t num_tokens, int64_t vocab, int64_t dim,
                       int64_t vocab_start, int64_t vocab_full) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t r = local_row(ids[t], t, vocab, vocab_start, vocab_full);
    if (r < 0) {
      std::fill(out + t * dim, out + (t + 1) * dim, T(0));
      continue;
    }
    const T* row = table + r * dim;
    std::copy(row, row + dim, out + t * dim);
  }
}

template <typename T>
void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t num_tokens, int64_t vocab, int64_t dim,
                        int64_t vocab_start, int64_t vocab_full) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t r = local_row(ids[t], t, vocab, vocab_start, vocab_full);
    if (r < 0) continue;
    T* row = dtable + r * dim;
    const T* g = dout + t * dim;
    for (int64_t i = 0; i < dim; ++i) row[i] += g[i];
  }
}

template void embedding_forward<float>(const int32_t*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                       int64_t);
template void embedding_forward<double>(const int32_t*, const double*, double*, int64_t, int64_t, int64_t, int64_t,
                                        int64_t);
template void embedding_backward<float>(const int32_t*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                        int64_t);
template void embedding_backward<double>(const int32_t*, const double*, double*, int64_t, int64_t, int64_t, int64_t,
                                         int64_t);

}  // namespace moe::cpu

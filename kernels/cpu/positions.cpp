// CPU reference learned absolute positions (forward add, backward per-position sum). The position
// of row t is t % seq_len (less its document's start under document positions), as in rope.
#include "kernels/cpu/positions.h"

namespace moe::cpu {

namespace {

int64_t position_of(int64_t t, int64_t seq_len, const int32_t* doc_starts) {
  return t % seq_len - (doc_starts ? doc_starts[t] : 0);
}

}  // namespace

template <typename T>
void position_add_forward(T* x, const T* pos, int64_t num_tokens, int64_t dim, int64_t seq_len,
                          const int32_t* doc_starts) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* p = pos + position_of(t, seq_len, doc_starts) * dim;
    T* row = x + t * dim;
    for (int64_t i = 0; i < dim; ++i) row[i] += p[i];
  }
}

template <typename T>
void position_add_backward(const T* dx, T* dpos, int64_t num_tokens, int64_t dim, int64_t seq_len,
                           const int32_t* doc_starts) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    T* p = dpos + position_of(t, seq_len, doc_starts) * dim;
    const T* g = dx + t * dim;
    for (int64_t i = 0; i < dim; ++i) p[i] += g[i];
  }
}

template void position_add_forward<float>(float*, const float*, int64_t, int64_t, int64_t, const int32_t*);
template void position_add_forward<double>(double*, const double*, int64_t, int64_t, int64_t, const int32_t*);
template void position_add_backward<float>(const float*, float*, int64_t, int64_t, int64_t, const int32_t*);
template void position_add_backward<double>(const double*, double*, int64_t, int64_t, int64_t, const int32_t*);

}  // namespace moe::cpu

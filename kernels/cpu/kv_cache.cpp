// CPU reference of the KV-cache write and the decode attention: sums and softmax in double,
// one sequence and head at a time.
#include "kernels/cpu/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

template <typename T>
void kv_cache_write(const T* rows, const int32_t* positions, int64_t num_rows, T* cache, const KvCacheShape& s) {
  MOE_CHECK(s.batch > 0 && num_rows % s.batch == 0, "kv_cache_write: ", num_rows, " rows are not whole groups of ",
            s.batch, " sequences");
  const int64_t per_seq = num_rows / s.batch, hd = s.head_dim;
  for (int64_t n = 0; n < num_rows; ++n) {
    const int64_t b = n / per_seq, p = positions[n];
    MOE_CHECK(p >= 0 && p < s.max_len, "kv_cache_write: row ", n, " has position ", p, " outside the cache of ",
              s.max_len);
    for (int64_t h = 0; h < s.num_heads; ++h) {
      const T* src = rows + (n * s.num_heads + h) * hd;
      std::copy(src, src + hd, cache + ((b * s.num_heads + h) * s.max_len + p) * hd);
    }
  }
}

template <typename T>
void decode_attention(const T* q, const T* k_cache, const T* v_cache, const int32_t* lengths, T* out,
                      int64_t num_q_heads, const KvCacheShape& s) {
  const int64_t hd = s.head_dim, group = num_q_heads / s.num_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> scores, acc(static_cast<size_t>(hd));
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t len = lengths[b];
    MOE_CHECK(len >= 1 && len <= s.max_len, "decode_attention: sequence ", b, " has length ", len,
              " outside [1, ", s.max_len, "]");
    scores.assign(static_cast<size_t>(len), 0.0);
    for (int64_t h = 0; h < num_q_heads; ++h) {
      const T* qh = q + (b * num_q_heads + h) * hd;
      const int64_t base = (b * s.num_heads + h / group) * s.max_len * hd;
      double max = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        double dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += static_cast<double>(qh[i]) * static_cast<double>(k_cache[base + j * hd + i]);
        scores[static_cast<size_t>(j)] = dot * scale;
        max = std::max(max, dot * scale);
      }
      double total = 0;
      for (auto& x : scores) total += x = std::exp(x - max);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < len; ++j) {
        const double p = scores[static_cast<size_t>(j)] / total;
        for (int64_t i = 0; i < hd; ++i) acc[static_cast<size_t>(i)] += p * static_cast<double>(v_cache[base + j * hd + i]);
      }
      T* oh = out + (b * num_q_heads + h) * hd;
      for (int64_t i = 0; i < hd; ++i) oh[i] = static_cast<T>(acc[static_cast<size_t>(i)]);
    }
  }
}

template void kv_cache_write<float>(const float*, const int32_t*, int64_t, float*, const KvCacheShape&);
template void kv_cache_write<double>(const double*, const int32_t*, int64_t, double*, const KvCacheShape&);
template void decode_attention<float>(const float*, const float*, const float*, const int32_t*, float*, int64_t,
                                      const KvCacheShape&);
template void decode_attention<double>(const double*, const double*, const double*, const int32_t*, double*, int64_t,
                                       const KvCacheShape&);

}  // namespace moe::cpu

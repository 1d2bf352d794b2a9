// CPU reference GQA attention (causal or not, masked to each token's document, or cross-attention), blocked
// over query rows: each block of rows does its score, probability and gradient products as GEMMs over its keys.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace moe::cpu {

using kernels::AttentionShape;

namespace {

constexpr int64_t k_block_rows = 64;  // query rows per block: bounds scratch to 64 x S

// One (batch, query head) problem: its slices of q, k, v (and of same-shaped tensors).
struct HeadSlice {
  int64_t q_offset, kv_offset, q_stride, kv_stride;
};

HeadSlice head_slice(const AttentionShape& d, int64_t b, int64_t h) {
  const int64_t g = h / (d.num_heads / d.num_kv_heads);
  const int64_t q_stride = d.num_heads * d.head_dim, kv_stride = d.num_kv_heads * d.head_dim;
  return {b * d.seq_len * q_stride + h * d.head_dim, b * d.kv_len() * kv_stride + g * d.head_dim, q_stride, kv_stride};
}

// Keys a block of query rows i0 .. i0 + rows - 1 can see (causal: up to its last row).
int64_t block_keys(const kernels::AttentionShape& d, int64_t i0, int64_t rows) {
  return d.causal ? i0 + rows : d.kv_len();
}
// One past the last key query i sees.
int64_t visible_end(const kernels::AttentionShape& d, int64_t i) { return d.causal ? i + 1 : d.kv_len(); }
// The first key query i of sequence b sees: its document's first token under document masking.
int64_t visible_begin(const int32_t* doc_starts, const kernels::AttentionShape& d, int64_t b, int64_t i) {
  return doc_starts ? doc_starts[b * d.seq_len + i] : 0;
}

// scores[rows, keys] = scale * q[i0 : i0+rows] @ k[0 : keys]^T.
template <typename T>
void block_scores(const T* q, const T* k, const HeadSlice& hs, int64_t i0, int64_t rows, int64_t keys, int64_t hd,
                  double scale, T* scores) {
  gemm_strided<T>(q + hs.q_offset + i0 * hs.q_stride, hs.q_stride, false, k + hs.kv_offset, hs.kv_stride, true, scores,
                  keys, rows, keys, hd, static_cast<T>(scale), T(0));
}

// Keys before `begin` and from `end` on (not visible to this row) get probability 0.
template <typename T>
void mask_row(T* row, int64_t begin, int64_t end, int64_t keys) {
  std::fill(row, row + begin, T(0));
  std::fill(row + end, row + keys, T(0));
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* out, T* lse, const AttentionShape& d,
                       const int32_t* doc_starts) {
  const int64_t S = d.seq_len, hd = d.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<T> probs(static_cast<size_t>(std::min(k_block_rows, S) * d.kv_len()));
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t h = 0; h < d.num_heads; ++h) {
      const HeadSlice hs = head_slice(d, b, h);
      T* lse_h = lse + (b * d.num_heads + h) * S;
      for (int64_t i0 = 0; i0 < S; i0 += k_block_rows) {
        const int64_t rows = std::min(k_block_rows, S - i0), keys = block_keys(d, i0, rows);
        block_scores(q, k, hs, i0, rows, keys, hd, scale, probs.data());
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r, begin = visible_begin(doc_starts, d, b, i), end = visible_end(d, i);
          T* row = probs.data() + r * keys;
          const double mx = static_cast<double>(*std::max_element(row + begin, row + end));
          double denom = 0;
          for (int64_t j = begin; j < end; ++j) denom += std::exp(static_cast<double>(row[j]) - mx);
          for (int64_t j = begin; j < end; ++j) {
            row[j] = static_cast<T>(std::exp(static_cast<double>(row[j]) - mx) / denom);
          }
          mask_row(row, begin, end, keys);
          lse_h[i] = static_cast<T>(mx + std::log(denom));
        }
        gemm_strided<T>(probs.data(), keys, false, v + hs.kv_offset, hs.kv_stride, false,
                        out + hs.q_offset + i0 * hs.q_stride, hs.q_stride, rows, hd, keys, T(1), T(0));
      }
    }
  }
}

// FlashAttention-2 backward per block of query rows, with P rebuilt from the saved lse:
// dP = dO V^T, D_i = dO_i . O_i, dS = P * (dP - D); dQ = scale dS K, dK += scale dS^T Q,
// dV += P^T dO. The query heads of one kv group add into the same dK, dV slices.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout, T* dq, T* dk,
                        T* dv, const AttentionShape& d, const int32_t* doc_starts) {
  const int64_t S = d.seq_len, hd = d.head_dim, group = d.num_heads / d.num_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const size_t block = static_cast<size_t>(std::min(k_block_rows, S) * d.kv_len());
  std::vector<T> probs(block), dprobs(block);
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t g = 0; g < d.num_kv_heads; ++g) {
      const HeadSlice first = head_slice(d, b, g * group);
      for (int64_t j = 0; j < d.kv_len(); ++j) {
        std::fill_n(dk + first.kv_offset + j * first.kv_stride, hd, T(0));
        std::fill_n(dv + first.kv_offset + j * first.kv_stride, hd, T(0));
      }
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const HeadSlice hs = head_slice(d, b, h);
        const T* lse_h = lse + (b * d.num_heads + h) * S;
        for (int64_t i0 = 0; i0 < S; i0 += k_block_rows) {
          const int64_t rows = std::min(k_block_rows, S - i0), keys = block_keys(d, i0, rows);
          const T* q_blk = q + hs.q_offset + i0 * hs.q_stride;
          const T* do_blk = dout + hs.q_offset + i0 * hs.q_stride;
          block_scores(q, k, hs, i0, rows, keys, hd, scale, probs.data());
          gemm_strided<T>(do_blk, hs.q_stride, false, v + hs.kv_offset, hs.kv_stride, true, dprobs.data(), keys, rows,
                          keys, hd, T(1), T(0));
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r, begin = visible_begin(doc_starts, d, b, i), end = visible_end(d, i);
            T* p = probs.data() + r * keys;
            T* ds = dprobs.data() + r * keys;
            const T* o_i = out + hs.q_offset + i * hs.q_stride;
            const T* do_i = do_blk + r * hs.q_stride;
            double d_i = 0;
            for (int64_t c = 0; c < hd; ++c) d_i += static_cast<double>(do_i[c]) * static_cast<double>(o_i[c]);
            for (int64_t j = begin; j < end; ++j) {
              const double pj = std::exp(static_cast<double>(p[j]) - static_cast<double>(lse_h[i]));
              p[j] = static_cast<T>(pj);
              ds[j] = static_cast<T>(pj * (static_cast<double>(ds[j]) - d_i));
            }
            mask_row(p, begin, end, keys);
            mask_row(ds, begin, end, keys);
          }
          gemm_strided<T>(dprobs.data(), keys, false, k + hs.kv_offset, hs.kv_stride, false,
                          dq + hs.q_offset + i0 * hs.q_stride, hs.q_stride, rows, hd, keys, static_cast<T>(scale),
                          T(0));
          gemm_strided<T>(dprobs.data(), keys, true, q_blk, hs.q_stride, false, dk + hs.kv_offset, hs.kv_stride, keys,
                          hd, rows, static_cast<T>(scale), T(1));
          gemm_strided<T>(probs.data(), keys, true, do_blk, hs.q_stride, false, dv + hs.kv_offset, hs.kv_stride, keys,
                          hd, rows, T(1), T(1));
        }
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, float*, float*, const AttentionShape&,
                                       const int32_t*);
template void attention_forward<double>(const double*, const double*, const double*, double*, double*,
                                        const AttentionShape&, const int32_t*);
template void attention_backward<float>(const float*, const float*, const float*, const float*, const float*,
                                        const float*, float*, float*, float*, const AttentionShape&, const int32_t*);
template void attention_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                         const double*, double*, double*, double*, const AttentionShape&,
                                         const int32_t*);

}  // namespace moe::cpu

// Shape and dtype contracts of the KV-cache ops (kv_cache_ops.h), checked once, then dispatched
// to the backend of the tensors' device.
#include "src/ops/kv_cache_ops.h"

#include "src/ops/backend.h"

namespace moe::ops {

namespace {

void check_cache(const Tensor& cache, const Tensor& like, const char* name) {
  MOE_CHECK(cache.defined() && cache.ndim() == 4, name, " must be [batch, heads, max_len, head_dim], got ",
            cache.defined() ? shape_str(cache.shape()) : std::string("undefined"));
  check_dtype(cache, like.dtype(), name);
  check_same_device(cache, like, name);
}

}  // namespace

void rope_at(Tensor& x, int64_t num_heads, const Tensor& positions, float theta, const RopeScaling& scaling) {
  MOE_CHECK(x.defined() && x.ndim() == 2 && num_heads > 0 && x.size(1) % num_heads == 0 &&
                (x.size(1) / num_heads) % 2 == 0,
            "rope_at: x", x.defined() ? shape_str(x.shape()) : "", " with ", num_heads, " heads needs an even head dim");
  check_index(positions, {x.size(0)}, x, "rope_at positions");
  run_on(x, OpKind::elementwise)->rope_at(x, num_heads, positions, theta, scaling);
}

void kv_cache_write(const Tensor& rows, const Tensor& positions, Tensor& cache) {
  check_cache(cache, rows, "kv_cache_write cache");
  const int64_t batch = cache.size(0), heads = cache.size(1), hd = cache.size(3);
  MOE_CHECK(rows.ndim() == 2 && rows.size(1) == heads * hd && batch > 0 && rows.size(0) % batch == 0,
            "kv_cache_write: rows", shape_str(rows.shape()), " do not fit the cache", shape_str(cache.shape()));
  check_index(positions, {rows.size(0)}, rows, "kv_cache_write positions");
  run_on(rows, OpKind::elementwise)->kv_cache_write(rows, positions, cache);
}

void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                      Tensor& out) {
  check_cache(k_cache, q, "decode_attention k_cache");
  check_like(v_cache, k_cache, "decode_attention v_cache");
  const int64_t batch = k_cache.size(0), kv_heads = k_cache.size(1), hd = k_cache.size(3);
  MOE_CHECK(q.ndim() == 2 && q.size(0) == batch && q.size(1) % hd == 0 && (q.size(1) / hd) % kv_heads == 0,
            "decode_attention: q", shape_str(q.shape()), " is not one row of whole query-head groups per sequence "
            "of the cache", shape_str(k_cache.shape()));
  check_index(lengths, {batch}, q, "decode_attention lengths");
  check_like(out, q, "decode_attention out");
  run_on(q, OpKind::attention_forward)->decode_attention(q, k_cache, v_cache, lengths, out);
}

}  // namespace moe::ops

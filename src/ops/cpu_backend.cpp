// The CPU backend: maps Tensors to raw pointers and calls the f32/f64 reference kernels in
// kernels/cpu. ops.cpp has already checked shapes and dtypes; only the dtype dispatch is here.
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/activations.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_cache.h"
#include "kernels/cpu/balance.h"
#include "kernels/cpu/capacity.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gates.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/norms.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/positions.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/router.h"
#include "kernels/cpu/rows.h"
#include "src/ops/backend.h"

namespace moe::ops {

namespace {

// Runtime dtype -> kernel element type. fn receives a value of the element type as a tag.
template <typename Fn>
decltype(auto) dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(float{});
    case DType::f64: return fn(double{});
    default: break;
  }
  MOE_FAIL(op, ": the CPU backend supports f32 and f64, got ", dtype_name(dtype));
}

// As dispatch_float, plus i32 (row movement of index tensors).
template <typename Fn>
void dispatch_rows(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::i32) {
    fn(int32_t{});
    return;
  }
  dispatch_float(dtype, op, fn);
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.data_as<T>();
}

const int32_t* index_ptr(const Tensor& t) { return t.data_as<int32_t>(); }

// An optional tensor as a pointer: nullptr when undefined.
template <typename T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? t.data_as<const T>() : nullptr;
}
template <typename T>
T* optional_mut(const Tensor& t) {
  return t.defined() ? t.data_as<T>() : nullptr;
}

// The slots per expert of a per-expert balancing term: counted from its ids, or given.
std::vector<int64_t> counts_of(const SlotCounts& c, int64_t experts) {
  if (!c.ids.defined()) return {ptr<int64_t>(c.counts), ptr<int64_t>(c.counts) + experts};
  std::vector<int64_t> counts(static_cast<size_t>(experts), 0);
  cpu::count_experts(index_ptr(c.ids), c.ids.numel(), experts, counts.data());
  return counts;
}

// bf16 tensors can live on the host (checkpoints, tests); casts to and from them go through f32.
void cast_with_bf16(const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  if (src.dtype() == DType::bf16 && dst.dtype() == DType::bf16) {
    std::copy(ptr<uint16_t>(src), ptr<uint16_t>(src) + n, ptr<uint16_t>(dst));
  } else if (src.dtype() == DType::bf16) {
    dispatch_float(dst.dtype(), "cast", [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < n; ++i) ptr<T>(dst)[i] = static_cast<T>(bf16_bits_to_f32(ptr<uint16_t>(src)[i]));
    });
  } else {
    dispatch_float(src.dtype(), "cast", [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < n; ++i) ptr<uint16_t>(dst)[i] = f32_to_bf16_bits(static_cast<float>(ptr<T>(src)[i]));
    });
  }
}

cpu::KvCacheShape cpu_cache_shape(const Tensor& cache) {
  return {cache.size(0), cache.size(1), cache.size(2), cache.size(3)};
}

class CpuBackend final : public Backend {
 public:
  void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
              float beta) override {
    const int64_t m = c.size(0), n = c.size(1), k = trans_a ? a.size(0) : a.size(1);
    dispatch_float(a.dtype(), "matmul", [&](auto tag) {
      using T = decltype(tag);
      cpu::gemm<T>(ptr<T>(a), trans_a, ptr<T>(b), trans_b, ptr<T>(c), m, n, k, static_cast<T>(alpha),
                   static_cast<T>(beta));
    });
  }

  void grouped_matmul(const Tensor& x, const Tensor& offsets, const Tensor& w, bool trans_w, Tensor& y) override {
    const kernels::GroupedGemmShape shape{offsets.size(0) - 1, x.size(0), x.size(1), y.size(1)};
    dispatch_float(x.dtype(), "grouped_matmul", [&](auto tag) {
      using T = decltype(tag);
      cpu::grouped_gemm<T>(ptr<T>(x), index_ptr(offsets), ptr<T>(w), trans_w, ptr<T>(y), shape);
    });
  }

  void grouped_matmul_weight_grad(const Tensor& x, const Tensor& offsets, const Tensor& dy, Tensor& dw,
                                  bool accumulate) override {
    if (!accumulate) dw.zero_();  // the reference adds into zeros
    const kernels::GroupedGemmShape shape{offsets.size(0) - 1, x.size(0), x.size(1), dy.size(1)};
    dispatch_float(x.dtype(), "grouped_matmul_weight_grad", [&](auto tag) {
      using T = decltype(tag);
      cpu::grouped_gemm_weight_grad<T>(ptr<T>(x), index_ptr(offsets), ptr<T>(dy), ptr<T>(dw), shape);
    });
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, VocabShard shard) override {
    dispatch_float(table.dtype(), "embedding", [&](auto tag) {
      using T = decltype(tag);
      cpu::embedding_forward<T>(index_ptr(ids), ptr<T>(table), ptr<T>(out), ids.numel(), table.size(0), table.size(1),
                                shard.start, shard.full);
    });
  }

  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, VocabShard shard) override {
    dispatch_float(dout.dtype(), "embedding backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::embedding_backward<T>(index_ptr(ids), ptr<T>(dout), ptr<T>(dtable), ids.numel(), dtable.size(0),
                                 dtable.size(1), shard.start, shard.full);
    });
  }

  void position_add_forward(Tensor& x, const Tensor& pos, int64_t seq_len, const Tensor& doc_starts) override {
    dispatch_float(x.dtype(), "positions", [&](auto tag) {
      using T = decltype(tag);
      cpu::position_add_forward<T>(ptr<T>(x), ptr<T>(pos), x.size(0), x.size(1), seq_len,
                                   optional_ptr<int32_t>(doc_starts));
    });
  }

  void position_add_backward(const Tensor& dx, Tensor& dpos, int64_t seq_len, const Tensor& doc_starts) override {
    dispatch_float(dx.dtype(), "positions backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::position_add_backward<T>(ptr<T>(dx), ptr<T>(dpos), dx.size(0), dx.size(1), seq_len,
                                    optional_ptr<int32_t>(doc_starts));
    });
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& h, const Tensor& w, Tensor& y, Tensor& rstd,
                       float eps) override {
    dispatch_float(x.dtype(), "rmsnorm", [&](auto tag) {
      using T = decltype(tag);
      cpu::rmsnorm_forward<T>(ptr<T>(x), optional_ptr<T>(delta), optional_mut<T>(h), ptr<T>(w), ptr<T>(y),
                              ptr<T>(rstd), x.size(0), x.size(1), eps);
    });
  }

  void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                        const Tensor& dresidual, Tensor& dx, Tensor& dw) override {
    dispatch_float(x.dtype(), "rmsnorm backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::rmsnorm_backward<T>(ptr<T>(x), ptr<T>(w), ptr<T>(rstd), ptr<T>(dy), optional_ptr<T>(dresidual), ptr<T>(dx),
                               ptr<T>(dw), x.size(0), x.size(1));
    });
  }

  void layernorm_forward(const Tensor& x, const Tensor& delta, Tensor& h, const Tensor& w, const Tensor& b, Tensor& y,
                         Tensor& mean, Tensor& rstd, float eps) override {
    dispatch_float(x.dtype(), "layernorm", [&](auto tag) {
      using T = decltype(tag);
      cpu::layernorm_forward<T>(ptr<T>(x), optional_ptr<T>(delta), optional_mut<T>(h), ptr<T>(w), ptr<T>(b),
                                ptr<T>(y), ptr<T>(mean), ptr<T>(rstd), x.size(0), x.size(1), eps);
    });
  }

  void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                          const Tensor& dresidual, Tensor& dx, Tensor& dw, Tensor& db) override {
    dispatch_float(x.dtype(), "layernorm backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::layernorm_backward<T>(ptr<T>(x), ptr<T>(w), ptr<T>(mean), ptr<T>(rstd), ptr<T>(dy),
                                 optional_ptr<T>(dresidual), ptr<T>(dx), ptr<T>(dw), ptr<T>(db), x.size(0),
                                 x.size(1));
    });
  }

  void rope(Tensor& x, int64_t num_heads, int64_t seq_len, float theta, bool inverse, const Tensor& doc_starts,
            const RopeScaling& scaling) override {
    dispatch_float(x.dtype(), "rope", [&](auto tag) {
      using T = decltype(tag);
      cpu::rope<T>(ptr<T>(x), x.size(0), num_heads, x.size(1) / num_heads, seq_len, theta, inverse,
                   optional_ptr<int32_t>(doc_starts), scaling);
    });
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                         const AttentionShape& shape, const Tensor& doc_starts) override {
    dispatch_float(q.dtype(), "attention", [&](auto tag) {
      using T = decltype(tag);
      cpu::attention_forward<T>(ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(out), ptr<T>(lse), shape,
                                optional_ptr<int32_t>(doc_starts));
    });
  }

  void rope_at(Tensor& x, int64_t num_heads, const Tensor& positions, float theta,
               const RopeScaling& scaling) override {
    dispatch_float(x.dtype(), "rope_at", [&](auto tag) {
      using T = decltype(tag);
      cpu::rope_at<T>(ptr<T>(x), x.size(0), num_heads, x.size(1) / num_heads, index_ptr(positions), theta, scaling);
    });
  }

  void kv_cache_write(const Tensor& rows, const Tensor& positions, Tensor& cache) override {
    dispatch_float(rows.dtype(), "kv_cache_write", [&](auto tag) {
      using T = decltype(tag);
      cpu::kv_cache_write<T>(ptr<T>(rows), index_ptr(positions), rows.size(0), ptr<T>(cache), cpu_cache_shape(cache));
    });
  }

  void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        Tensor& out) override {
    dispatch_float(q.dtype(), "decode_attention", [&](auto tag) {
      using T = decltype(tag);
      const cpu::KvCacheShape shape = cpu_cache_shape(k_cache);
      cpu::decode_attention<T>(ptr<T>(q), ptr<T>(k_cache), ptr<T>(v_cache), index_ptr(lengths), ptr<T>(out),
                               q.size(1) / shape.head_dim, shape);
    });
  }

  int64_t attention_workspace_numel(const AttentionShape&) override { return 0; }  // scratch lives inside

  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, const AttentionShape& shape,
                          const Tensor&, const Tensor& doc_starts) override {
    dispatch_float(q.dtype(), "attention backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::attention_backward<T>(ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(out), ptr<T>(lse), ptr<T>(dout), ptr<T>(dq),
                                 ptr<T>(dk), ptr<T>(dv), shape, optional_ptr<int32_t>(doc_starts));
    });
  }

  void activation_forward(Activation act, const Tensor& x, Tensor& y) override {
    dispatch_float(x.dtype(), activation_name(act), [&](auto tag) {
      using T = decltype(tag);
      cpu::activation_forward<T>(act, ptr<T>(x), ptr<T>(y), y.size(0), y.size(1));
    });
  }

  void activation_backward(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx) override {
    dispatch_float(x.dtype(), activation_name(act), [&](auto tag) {
      using T = decltype(tag);
      cpu::activation_backward<T>(act, ptr<T>(x), ptr<T>(dy), ptr<T>(dx), dy.size(0), dy.size(1));
    });
  }

  void activation_backward_weighted(Activation act, const Tensor& x, const Tensor& g, const Tensor& row_weights,
                                    Tensor& dx, Tensor& a_weighted, Tensor& drow_weights) override {
    dispatch_float(x.dtype(), activation_name(act), [&](auto tag) {
      using T = decltype(tag);
      cpu::activation_backward_weighted<T>(act, ptr<T>(x), ptr<T>(g), optional_ptr<T>(row_weights), ptr<T>(dx),
                                           ptr<T>(a_weighted), optional_mut<T>(drow_weights), g.size(0), g.size(1));
    });
  }

  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse,
                             VocabShard shard) override {
    dispatch_float(logits.dtype(), "cross-entropy", [&](auto tag) {
      using T = decltype(tag);
      cpu::cross_entropy_forward<T>(ptr<T>(logits), index_ptr(targets), ptr<T>(loss), ptr<T>(lse), logits.size(0),
                                    logits.size(1), shard.start, shard.full);
    });
  }

  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, float scale,
                              Tensor& dlogits, VocabShard shard) override {
    dispatch_float(logits.dtype(), "cross-entropy backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::cross_entropy_backward<T>(ptr<T>(logits), index_ptr(targets), ptr<T>(lse), scale, ptr<T>(dlogits),
                                     logits.size(0), logits.size(1), shard.start, shard.full);
    });
  }

  bool cross_entropy_with_grad(const Tensor&, const Tensor&, Tensor&, Tensor&, float, Tensor&) override {
    return false;  // no single pass on the CPU: the reference is the forward then the backward
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    dispatch_float(a.dtype(), "add", [&](auto tag) {
      using T = decltype(tag);
      cpu::add<T>(ptr<T>(a), ptr<T>(b), ptr<T>(out), a.numel());
    });
  }

  void accumulate(Tensor& dst, const Tensor& src, float alpha) override {
    MOE_CHECK(dst.dtype() == src.dtype(), "accumulate: the CPU accumulates in the compute dtype, got ",
              dtype_name(dst.dtype()), " += ", dtype_name(src.dtype()));
    dispatch_float(dst.dtype(), "accumulate", [&](auto tag) {
      using T = decltype(tag);
      cpu::accumulate<T>(ptr<T>(dst), ptr<T>(src), alpha, dst.numel());
    });
  }

  void scale(Tensor& x, float alpha) override {
    dispatch_float(x.dtype(), "scale", [&](auto tag) {
      using T = decltype(tag);
      cpu::scale<T>(ptr<T>(x), alpha, x.numel());
    });
  }

  void cast(const Tensor& src, Tensor& dst) override {
    if (src.dtype() == DType::bf16 || dst.dtype() == DType::bf16) {
      cast_with_bf16(src, dst);
      return;
    }
    dispatch_float(src.dtype(), "cast", [&](auto src_tag) {
      using S = decltype(src_tag);
      dispatch_float(dst.dtype(), "cast", [&](auto dst_tag) {
        using D = decltype(dst_tag);
        cpu::cast<S, D>(ptr<S>(src), ptr<D>(dst), src.numel());
      });
    });
  }

  double sum(const Tensor& x) override {
    return dispatch_float(x.dtype(), "sum", [&](auto tag) {
      using T = decltype(tag);
      return cpu::sum<T>(ptr<T>(x), x.numel());
    });
  }

  double sum_squares(const Tensor& x) override {
    return dispatch_float(x.dtype(), "sum_squares", [&](auto tag) {
      using T = decltype(tag);
      return cpu::sum_squares<T>(ptr<T>(x), x.numel());
    });
  }

  void column_sum(const Tensor& x, Tensor& out) override {
    dispatch_float(x.dtype(), "column_sum", [&](auto tag) {
      using T = decltype(tag);
      cpu::column_sum<T>(ptr<T>(x), ptr<T>(out), x.size(0), x.size(1));
    });
  }

  void row_entropy_accumulate(const Tensor& scores, Tensor& acc, double weight) override {
    dispatch_float(scores.dtype(), "row_entropy_accumulate", [&](auto tag) {
      using T = decltype(tag);
      cpu::row_entropy_accumulate<T>(ptr<T>(scores), scores.size(0), scores.size(1), weight, ptr<double>(acc));
    });
  }

  void add_bias(Tensor& y, const Tensor& b) override {
    dispatch_float(y.dtype(), "add_bias", [&](auto tag) {
      using T = decltype(tag);
      cpu::add_bias<T>(ptr<T>(y), ptr<T>(b), y.size(0), y.size(1));
    });
  }

  void bias_backward(const Tensor& dy, Tensor& db) override {
    dispatch_float(dy.dtype(), "bias_backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::column_sum_accumulate<T>(ptr<T>(dy), ptr<T>(db), dy.size(0), dy.size(1));
    });
  }

  void gather_rows(const Tensor& src, const Tensor& index, Tensor& dst) override {
    dispatch_rows(src.dtype(), "gather_rows", [&](auto tag) {
      using T = decltype(tag);
      cpu::gather_rows<T>(ptr<T>(src), index_ptr(index), ptr<T>(dst), index.numel(), rows_of(src), cols_of(src));
    });
  }

  void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& dst) override {
    dispatch_rows(src.dtype(), "scatter_add_rows", [&](auto tag) {
      using T = decltype(tag);
      cpu::scatter_add_rows<T>(ptr<T>(src), index_ptr(index), ptr<T>(dst), index.numel(), rows_of(dst), cols_of(dst));
    });
  }

  void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, Tensor& scores,
                           Tensor& ids, Tensor& weights, Tensor& score_sums, Tensor& counts) override {
    dispatch_float(logits.dtype(), "router", [&](auto tag) {
      using T = decltype(tag);
      cpu::router_topk_forward<T>(ptr<T>(logits), optional_ptr<T>(bias), ptr<T>(scores), ptr<int32_t>(ids),
                                  ptr<T>(weights), logits.size(0), logits.size(1), options,
                                  optional_mut<T>(score_sums), optional_mut<int64_t>(counts));
    });
  }

  void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids, const Tensor& weights,
                            const Tensor& dweights, const Tensor& dscores, const Tensor& dscore_row,
                            const TopKOptions& options, Tensor& dlogits) override {
    dispatch_float(logits.dtype(), "router backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::router_topk_backward<T>(ptr<T>(logits), ptr<T>(scores), index_ptr(ids), ptr<T>(weights), ptr<T>(dweights),
                                   optional_ptr<T>(dscores), ptr<T>(dlogits), logits.size(0), logits.size(1),
                                   options, optional_ptr<T>(dscore_row));
    });
  }

  void expert_choice_forward(const Tensor& scores, int64_t capacity, Tensor& ids, Tensor& weights) override {
    dispatch_float(scores.dtype(), "expert choice", [&](auto tag) {
      using T = decltype(tag);
      cpu::expert_choice_forward<T>(ptr<T>(scores), ptr<int32_t>(ids), ptr<T>(weights), scores.size(0),
                                    scores.size(1), capacity);
    });
  }

  void expert_choice_backward(const Tensor& ids, const Tensor& dweights, Tensor& dscores) override {
    dispatch_float(dweights.dtype(), "expert choice backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::expert_choice_backward<T>(index_ptr(ids), ptr<T>(dweights), ptr<T>(dscores), dweights.numel());
    });
  }

  int64_t apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity,
                         DropOrder order) override {
    return dispatch_float(weights.dtype(), "apply_capacity", [&](auto tag) {
      using T = decltype(tag);
      return cpu::apply_capacity<T>(ptr<int32_t>(ids), ptr<T>(weights), ids.size(0), ids.size(1), num_experts,
                                    capacity, order);
    });
  }

  void apply_capacity_on_device(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity, DropOrder order,
                                Tensor& dropped) override {
    ptr<int64_t>(dropped)[0] = apply_capacity(ids, weights, num_experts, capacity, order);
  }

  void noisy_logits_forward(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, Tensor& h) override {
    dispatch_float(clean.dtype(), "noisy logits", [&](auto tag) {
      using T = decltype(tag);
      cpu::noisy_logits_forward<T>(ptr<T>(clean), ptr<T>(raw_noise), ptr<T>(normal), ptr<T>(h), clean.numel());
    });
  }

  void noisy_logits_backward(const Tensor& raw_noise, const Tensor& normal, const Tensor& dh, Tensor& dclean,
                             Tensor& draw_noise) override {
    dispatch_float(raw_noise.dtype(), "noisy logits backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::noisy_logits_backward<T>(ptr<T>(raw_noise), ptr<T>(normal), ptr<T>(dh), ptr<T>(dclean), ptr<T>(draw_noise),
                                    raw_noise.numel());
    });
  }

  void row_gate_forward(const Tensor& x, const Tensor& gate, Tensor& y) override {
    dispatch_float(x.dtype(), "row gate", [&](auto tag) {
      using T = decltype(tag);
      cpu::row_gate_forward<T>(ptr<T>(x), ptr<T>(gate), ptr<T>(y), x.size(0), x.size(1));
    });
  }

  void row_gate_backward(const Tensor& x, const Tensor& gate, const Tensor& dy, Tensor& dx, Tensor& dgate) override {
    dispatch_float(x.dtype(), "row gate backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::row_gate_backward<T>(ptr<T>(x), ptr<T>(gate), ptr<T>(dy), ptr<T>(dx), ptr<T>(dgate), x.size(0), x.size(1));
    });
  }

  std::vector<int64_t> moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens,
                                          Tensor& slot_pos) override {
    MOE_CHECK(num_experts >= 1, "moe_sort_by_expert: expert count must be positive, got ", num_experts);
    std::vector<int64_t> counts(static_cast<size_t>(num_experts));
    cpu::moe_sort_by_expert(index_ptr(ids), ids.size(0), ids.size(1), num_experts, ptr<int32_t>(sorted_tokens),
                            ptr<int32_t>(slot_pos), counts.data());
    return counts;
  }

  void moe_sort_by_expert_offsets(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens, Tensor& slot_pos,
                                  Tensor& offsets) override {
    std::vector<int64_t> counts = moe_sort_by_expert(ids, num_experts, sorted_tokens, slot_pos);
    int32_t* ends = ptr<int32_t>(offsets);
    ends[0] = 0;
    for (size_t e = 0; e < counts.size(); ++e) ends[e + 1] = ends[e] + static_cast<int32_t>(counts[e]);
  }

  // The reference is the two passes it fuses: the sort, then the gather (token -1 gathers zeros).
  void moe_permute_rows(const Tensor& ids, const Tensor& x, int64_t num_experts, Tensor& sorted_tokens,
                        Tensor& slot_pos, Tensor& offsets, Tensor& x_sorted) override {
    moe_sort_by_expert_offsets(ids, num_experts, sorted_tokens, slot_pos, offsets);
    if (x_sorted.size(0) > 0) gather_rows(x, sorted_tokens.rows(0, x_sorted.size(0)), x_sorted);
  }

  void switch_balance(const Tensor& score_sums, const SlotCounts& c, double alpha, Tensor& value,
                      Tensor& grad_row) override {
    const std::vector<int64_t> counts = counts_of(c, score_sums.size(0));
    dispatch_float(score_sums.dtype(), "switch_balance", [&](auto tag) {
      using T = decltype(tag);
      ptr<double>(value)[0] = cpu::switch_balance_from_counts<T>(ptr<T>(score_sums), counts.data(), c.tokens, c.slots,
                                                                 score_sums.size(0), alpha, ptr<T>(grad_row));
    });
  }

  void device_balance(const Tensor& score_sums, const SlotCounts& c, int64_t groups, double alpha, Tensor& value,
                      Tensor& grad_row) override {
    const std::vector<int64_t> counts = counts_of(c, score_sums.size(0));
    dispatch_float(score_sums.dtype(), "device_balance", [&](auto tag) {
      using T = decltype(tag);
      ptr<double>(value)[0] = cpu::device_balance_from_counts<T>(ptr<T>(score_sums), counts.data(), c.tokens, c.slots,
                                                                 score_sums.size(0), groups, alpha, ptr<T>(grad_row));
    });
  }

  void importance_balance(const Tensor& weights, const Tensor& ids, int64_t num_experts, double coef, Tensor& value,
                          Tensor& dweights) override {
    dispatch_float(weights.dtype(), "importance_balance", [&](auto tag) {
      using T = decltype(tag);
      cpu::importance_balance<T>(ptr<T>(weights), index_ptr(ids), ids.numel(), num_experts, coef, ptr<double>(value),
                                 ptr<T>(dweights));
    });
  }

  void z_balance(const Tensor& logits, double coef, Tensor& value, Tensor& dlogits) override {
    dispatch_float(logits.dtype(), "z_balance", [&](auto tag) {
      using T = decltype(tag);
      cpu::z_balance<T>(ptr<T>(logits), logits.size(0), logits.size(1), coef, ptr<double>(value), ptr<T>(dlogits));
    });
  }

  void seq_balance(const Tensor& scores, const Tensor& ids, int64_t seq_len, double coef, Tensor& value,
                   Tensor& dscores) override {
    dispatch_float(scores.dtype(), "seq_balance", [&](auto tag) {
      using T = decltype(tag);
      cpu::seq_balance<T>(ptr<T>(scores), index_ptr(ids), scores.size(0), scores.size(1), ids.size(1), seq_len, coef,
                          ptr<double>(value), ptr<T>(dscores));
    });
  }

  void load_balance(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, int64_t k, double coef,
                    Tensor& value, Tensor& dclean, Tensor& draw_noise) override {
    dispatch_float(clean.dtype(), "load_balance", [&](auto tag) {
      using T = decltype(tag);
      cpu::load_balance<T>(ptr<T>(clean), ptr<T>(raw_noise), ptr<T>(normal), clean.size(0), clean.size(1), k, coef,
                           ptr<double>(value), ptr<T>(dclean), ptr<T>(draw_noise));
    });
  }

  void count_experts(const Tensor& ids, int64_t num_experts, Tensor& counts) override {
    cpu::count_experts(index_ptr(ids), ids.numel(), num_experts, ptr<int64_t>(counts));
  }

  void update_expert_bias(Tensor& bias, const Tensor& loads, double gamma, const Tensor& skip) override {
    dispatch_float(bias.dtype(), "update_expert_bias", [&](auto tag) {
      using T = decltype(tag);
      cpu::update_expert_bias<T>(ptr<T>(bias), ptr<int64_t>(loads), bias.numel(), gamma, optional_ptr<float>(skip));
    });
  }

  // weights undefined: all 1 (the un-permute sum); k from slot_pos and the output's rows.
  void moe_combine_forward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights, Tensor& out,
                           const Tensor& add_a, const Tensor& add_b) override {
    const int64_t tokens = out.size(0), k = weights.defined() ? weights.size(1) : slot_pos.numel() / tokens;
    dispatch_float(y_sorted.dtype(), "moe_combine", [&](auto tag) {
      using T = decltype(tag);
      cpu::moe_combine_forward<T>(ptr<T>(y_sorted), index_ptr(slot_pos), weights.defined() ? ptr<T>(weights) : nullptr,
                                  ptr<T>(out), tokens, k, y_sorted.size(1), y_sorted.size(0), optional_ptr<T>(add_a),
                                  optional_ptr<T>(add_b));
    });
  }

  void moe_combine_backward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                            Tensor& dy_sorted, Tensor& dweights) override {
    dispatch_float(y_sorted.dtype(), "moe_combine backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::moe_combine_backward<T>(ptr<T>(y_sorted), index_ptr(slot_pos), ptr<T>(weights), ptr<T>(dout),
                                   ptr<T>(dy_sorted), ptr<T>(dweights), weights.size(0), weights.size(1),
                                   y_sorted.size(1), y_sorted.size(0));
    });
  }

  void moe_combine_backward_unweighted(const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                                       Tensor& dy_sorted, Tensor& row_weights) override {
    dispatch_float(dout.dtype(), "moe_combine backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::moe_combine_backward_unweighted<T>(index_ptr(slot_pos), ptr<T>(weights), ptr<T>(dout), ptr<T>(dy_sorted),
                                              ptr<T>(row_weights), weights.size(0), weights.size(1), dout.size(1),
                                              dy_sorted.size(0));
    });
  }

  void moe_scatter_rows(const Tensor& x, const Tensor& slot_pos, Tensor& x_sorted) override {
    dispatch_rows(x.dtype(), "moe_scatter_rows", [&](auto tag) {
      using T = decltype(tag);
      cpu::moe_scatter_rows<T>(ptr<T>(x), index_ptr(slot_pos), ptr<T>(x_sorted), x.size(0),
                               x.size(0) > 0 ? slot_pos.numel() / x.size(0) : 1, x.size(1), x_sorted.size(0));
    });
  }

  void moe_gather_slots(const Tensor& row_values, const Tensor& slot_pos, Tensor& slot_values) override {
    dispatch_float(row_values.dtype(), "moe_gather_slots", [&](auto tag) {
      using T = decltype(tag);
      cpu::moe_gather_slots<T>(ptr<T>(row_values), index_ptr(slot_pos), ptr<T>(slot_values), slot_pos.numel(),
                               row_values.numel());
    });
  }

  void adamw_fused(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const Tensor& runs,
                   const Tensor& grad_scale, const AdamWParams& p, Tensor& params) override {
    const auto* table = runs.data_as<const AdamWRun>();
    const float* scale = optional_ptr<float>(grad_scale);
    const bool same = params.defined() && params.dtype() == master.dtype();
    const bool to_f32 = params.defined() && master.dtype() == DType::f64 && params.dtype() == DType::f32;
    dispatch_float(master.dtype(), "adamw_fused", [&](auto tag) {
      using T = decltype(tag);
      T* out = same ? ptr<T>(params) : nullptr;
      if (to_f32) {
        cpu::adamw_fused<double, float>(ptr<double>(master), ptr<double>(grad), ptr<double>(m), ptr<double>(v),
                                        master.numel(), table, runs.size(0), scale, p, ptr<float>(params));
      } else {
        cpu::adamw_fused<T, T>(ptr<T>(master), ptr<T>(grad), ptr<T>(m), ptr<T>(v), master.numel(), table,
                               runs.size(0), scale, p, out);
      }
    });
    // Other compute dtypes on the host (bf16) take the cast the kernel does not write.
    if (params.defined() && !same && !to_f32) cast_with_bf16(master, params);
  }

  void sum_accumulate(const Tensor& x, Tensor& acc, bool squares, double weight) override {
    dispatch_float(x.dtype(), "sum_accumulate", [&](auto tag) {
      using T = decltype(tag);
      cpu::sum_accumulate<T>(ptr<T>(x), x.numel(), squares, weight, ptr<double>(acc));
    });
  }

  void clip_scale(const Tensor& sum_sq, double max_norm, Tensor& scale) override {
    cpu::clip_scale(ptr<double>(sum_sq), sum_sq.numel(), max_norm, ptr<float>(scale));
  }

  void record_skipped_step(const Tensor& scale, Tensor& state, int64_t step) override {
    cpu::record_skipped_step(ptr<float>(scale), ptr<double>(state), step);
  }

  void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p) override {
    dispatch_float(param.dtype(), "adamw", [&](auto tag) {
      using T = decltype(tag);
      cpu::adamw_step<T>(ptr<T>(param), ptr<T>(grad), ptr<T>(m), ptr<T>(v), param.numel(), p);
    });
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace moe::ops

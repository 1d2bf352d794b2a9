// The CUDA backend of the ops layer: maps tensors (already shape-checked by ops.cpp) to raw
// pointers and launches the kernels of kernels/cuda on the compute stream of their device.
#if MOE_WITH_CUDA

#include <cuda_bf16.h>

#include "kernels/cuda/activations.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/balance.h"
#include "kernels/cuda/capacity.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gates.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/norms.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/reduce.h"
#include "kernels/cuda/kv_cache.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/router.h"
#include "kernels/cuda/rows.h"
#include "kernels/cuda/runtime.h"
#include "src/ops/backend.h"

namespace moe::ops {

namespace {

using bf16 = __nv_bfloat16;

const bf16* bf(const Tensor& t) { return t.data_as<const bf16>(); }
bf16* bf_mut(const Tensor& t) { return t.data_as<bf16>(); }
const float* f32(const Tensor& t) { return t.data_as<const float>(); }
float* f32_mut(const Tensor& t) { return t.data_as<float>(); }
const int32_t* i32(const Tensor& t) { return t.data_as<const int32_t>(); }
int32_t* i32_mut(const Tensor& t) { return t.data_as<int32_t>(); }

kernels::FloatType float_type(const Tensor& t, const char* what) {
  if (t.dtype() == DType::f32) return kernels::FloatType::f32;
  if (t.dtype() == DType::bf16) return kernels::FloatType::bf16;
  MOE_FAIL(what, ": dtype ", dtype_name(t.dtype()), " is not supported on CUDA (f32 or bf16)");
}

// Checks that every tensor of the op is on the first one's GPU, selects that GPU and returns
// the stream every kernel of this op runs on (a host pointer reaching a kernel would fault).
template <typename... Rest>
cudaStream_t on_device(const Tensor& first, const Rest&... rest) {
  MOE_CHECK(first.is_cuda(), "CUDA backend called with a tensor on ", first.device().str());
  (check_same_device(first, rest, "CUDA op operands"), ...);
  cuda::set_device(first.device().ordinal);
  return cuda::compute_stream();
}

// An optional f32 tensor as a pointer: nullptr when undefined.
const float* optional_f32(const Tensor& t, const char* what) {
  if (!t.defined()) return nullptr;
  check_dtype(t, DType::f32, what);
  return f32(t);
}

// An optional bf16 tensor (ops.cpp checked its shape, dtype and device) as a pointer: nullptr when undefined.
const bf16* optional_bf16(const Tensor& t) { return t.defined() ? bf(t) : nullptr; }
const int32_t* optional_i32(const Tensor& t) { return t.defined() ? i32(t) : nullptr; }

// A per-expert balancing term's slots: ids to count, or counts (the other nullptr).
const int32_t* ids_of(const SlotCounts& c) { return optional_i32(c.ids); }
const int64_t* counts_of(const SlotCounts& c) { return c.ids.defined() ? nullptr : c.counts.data_as<const int64_t>(); }

cuda::KvCacheShape cuda_cache_shape(const Tensor& cache) {
  return {cache.size(0), cache.size(1), cache.size(2), cache.size(3)};
}
bf16* optional_bf16_mut(const Tensor& t) { return t.defined() ? bf_mut(t) : nullptr; }

class CudaBackend : public Backend {
 public:
  void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
              float beta) override {
    cudaStream_t stream = on_device(a, b, c);
    cuda::GemmShape shape;
    shape.m = c.size(0);
    shape.n = c.size(1);
    shape.k = trans_a ? a.size(0) : a.size(1);
    shape.trans_a = trans_a;
    shape.trans_b = trans_b;
    cuda::gemm_bf16(bf(a), bf(b), c.data(), float_type(c, "matmul c"), shape, alpha, beta, stream);
  }

  void grouped_matmul(const Tensor& x, const Tensor& offsets, const Tensor& w, bool trans_w, Tensor& y) override {
    cudaStream_t stream = on_device(x, offsets, w, y);
    const kernels::GroupedGemmShape shape{offsets.size(0) - 1, x.size(0), x.size(1), y.size(1)};
    cuda::grouped_gemm_bf16(bf(x), i32(offsets), bf(w), trans_w, bf_mut(y), shape, stream);
  }

  void grouped_matmul_weight_grad(const Tensor& x, const Tensor& offsets, const Tensor& dy, Tensor& dw,
                                  bool accumulate) override {
    cudaStream_t stream = on_device(x, offsets, dy, dw);
    const kernels::GroupedGemmShape shape{offsets.size(0) - 1, x.size(0), x.size(1), dy.size(1)};
    cuda::grouped_gemm_weight_grad_bf16(bf(x), i32(offsets), bf(dy), f32_mut(dw), shape, accumulate, stream);
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, VocabShard shard) override {
    cudaStream_t stream = on_device(table, ids, out);
    cuda::embedding_forward(i32(ids), bf(table), bf_mut(out), ids.numel(), table.size(0), table.size(1), shard.start,
                            shard.full, stream);
  }

  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, VocabShard shard) override {
    cudaStream_t stream = on_device(dout, ids, dtable);
    cuda::embedding_backward(i32(ids), bf(dout), f32_mut(dtable), ids.numel(), dtable.size(0), dtable.size(1),
                             shard.start, shard.full, stream);
  }

  void position_add_forward(Tensor& x, const Tensor& pos, int64_t seq_len, const Tensor& doc_starts) override {
    cudaStream_t stream = on_device(x, pos);
    cuda::position_add_forward(bf_mut(x), bf(pos), x.size(0), x.size(1), seq_len, optional_i32(doc_starts), stream);
  }

  void position_add_backward(const Tensor& dx, Tensor& dpos, int64_t seq_len, const Tensor& doc_starts) override {
    cudaStream_t stream = on_device(dx, dpos);
    cuda::position_add_backward(bf(dx), f32_mut(dpos), dx.size(0), dx.size(1), seq_len, optional_i32(doc_starts),
                                stream);
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& h, const Tensor& w, Tensor& y, Tensor& rstd,
                       float eps) override {
    cudaStream_t stream = on_device(x, w, y, rstd);
    cuda::rmsnorm_forward(bf(x), optional_bf16(delta), optional_bf16_mut(h), bf(w), bf_mut(y), f32_mut(rstd),
                          x.size(0), x.size(1), eps, stream);
  }

  void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                        const Tensor& dresidual, Tensor& dx, Tensor& dw) override {
    cudaStream_t stream = on_device(x, w, rstd, dy, dx, dw);
    check_dtype(rstd, DType::f32, "rmsnorm rstd");
    check_dtype(w, DType::bf16, "rmsnorm w");
    cuda::rmsnorm_backward(bf(x), bf(w), f32(rstd), bf(dy), optional_bf16(dresidual), bf_mut(dx), f32_mut(dw),
                           x.size(0), x.size(1), stream);
  }

  void layernorm_forward(const Tensor& x, const Tensor& delta, Tensor& h, const Tensor& w, const Tensor& b, Tensor& y,
                         Tensor& mean, Tensor& rstd, float eps) override {
    cudaStream_t stream = on_device(x, w, b, y, mean, rstd);
    cuda::layernorm_forward(bf(x), optional_bf16(delta), optional_bf16_mut(h), bf(w), bf(b), bf_mut(y),
                            f32_mut(mean), f32_mut(rstd), x.size(0), x.size(1), eps, stream);
  }

  void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                          const Tensor& dresidual, Tensor& dx, Tensor& dw, Tensor& db) override {
    cudaStream_t stream = on_device(x, w, mean, rstd, dy, dx, dw, db);
    check_shape(mean, {x.size(0)}, "layernorm mean");
    check_shape(rstd, {x.size(0)}, "layernorm rstd");
    check_dtype(mean, DType::f32, "layernorm mean");
    check_dtype(rstd, DType::f32, "layernorm rstd");
    check_dtype(w, DType::bf16, "layernorm w");
    cuda::layernorm_backward(bf(x), bf(w), f32(mean), f32(rstd), bf(dy), optional_bf16(dresidual), bf_mut(dx),
                             f32_mut(dw), f32_mut(db), x.size(0), x.size(1), stream);
  }

  void rope(Tensor& x, int64_t num_heads, int64_t seq_len, float theta, bool inverse, const Tensor& doc_starts,
            const RopeScaling& scaling) override {
    cudaStream_t stream = on_device(x);
    cuda::RopeShape shape{x.size(0), num_heads, x.size(1) / num_heads, seq_len};
    cuda::rope(bf_mut(x), shape, theta, inverse, optional_i32(doc_starts), scaling, stream);
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                         const AttentionShape& shape, const Tensor& doc_starts) override {
    cudaStream_t stream = on_device(q, k, v, out, lse);
    cuda::attention_forward(bf(q), bf(k), bf(v), bf_mut(out), f32_mut(lse), shape, optional_i32(doc_starts), stream);
  }

  void rope_at(Tensor& x, int64_t num_heads, const Tensor& positions, float theta,
               const RopeScaling& scaling) override {
    cudaStream_t stream = on_device(x, positions);
    cuda::rope_at(bf_mut(x), x.size(0), num_heads, x.size(1) / num_heads, i32(positions), theta, scaling, stream);
  }

  void kv_cache_write(const Tensor& rows, const Tensor& positions, Tensor& cache) override {
    cudaStream_t stream = on_device(rows, positions, cache);
    cuda::kv_cache_write(bf(rows), i32(positions), rows.size(0), bf_mut(cache), cuda_cache_shape(cache), stream);
  }

  void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        Tensor& out) override {
    cudaStream_t stream = on_device(q, k_cache, v_cache, lengths, out);
    const cuda::KvCacheShape shape = cuda_cache_shape(k_cache);
    cuda::decode_attention(bf(q), bf(k_cache), bf(v_cache), i32(lengths), bf_mut(out), q.size(1) / shape.head_dim,
                           shape, stream);
  }

  int64_t attention_workspace_numel(const AttentionShape& shape) override {
    const size_t bytes = cuda::attention_backward_workspace_bytes(shape);
    return static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float));
  }

  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, const AttentionShape& shape,
                          const Tensor& workspace, const Tensor& doc_starts) override {
    cudaStream_t stream = on_device(q, k, v, out, lse, dout, dq, dk, dv);
    check_shape(lse, {shape.batch, shape.num_heads, shape.seq_len}, "attention lse");
    check_dtype(lse, DType::f32, "attention lse");
    // The caller's workspace, or one from the stream-ordered pool for this call.
    const Tensor scratch = workspace.defined()
                               ? workspace
                               : Tensor::empty({attention_workspace_numel(shape)}, DType::f32, q.device());
    cuda::attention_backward(bf(q), bf(k), bf(v), bf(out), f32(lse), bf(dout), bf_mut(dq), bf_mut(dk), bf_mut(dv),
                             scratch.data(), shape, optional_i32(doc_starts), stream);
  }

  void activation_forward(Activation act, const Tensor& x, Tensor& y) override {
    cudaStream_t stream = on_device(x, y);
    cuda::activation_forward(act, bf(x), bf_mut(y), y.size(0), y.size(1), stream);
  }

  void activation_backward(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx) override {
    cudaStream_t stream = on_device(x, dy, dx);
    cuda::activation_backward(act, bf(x), bf(dy), bf_mut(dx), dy.size(0), dy.size(1), stream);
  }

  void activation_backward_weighted(Activation act, const Tensor& x, const Tensor& g, const Tensor& row_weights,
                                    Tensor& dx, Tensor& a_weighted, Tensor& drow_weights) override {
    cudaStream_t stream = on_device(x, g, dx, a_weighted);
    const float* weights = row_weights.defined() ? f32(row_weights) : nullptr;
    float* dweights = drow_weights.defined() ? f32_mut(drow_weights) : nullptr;
    cuda::activation_backward_weighted(act, bf(x), bf(g), weights, bf_mut(dx), bf_mut(a_weighted), dweights,
                                       g.size(0), g.size(1), stream);
  }

  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse,
                             VocabShard shard) override {
    cudaStream_t stream = on_device(logits, targets, loss, lse);
    cuda::cross_entropy_forward(bf(logits), i32(targets), f32_mut(loss), f32_mut(lse), logits.size(0),
                                logits.size(1), shard.start, shard.full, stream);
  }

  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, float scale,
                              Tensor& dlogits, VocabShard shard) override {
    cudaStream_t stream = on_device(logits, targets, lse, dlogits);
    check_dtype(lse, DType::f32, "cross-entropy lse");
    cuda::cross_entropy_backward(bf(logits), i32(targets), f32(lse), scale, bf_mut(dlogits), logits.size(0),
                                 logits.size(1), shard.start, shard.full, stream);
  }

  // One pass over each row where it fits the shared memory (cuda::cross_entropy_with_grad).
  bool cross_entropy_with_grad(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse, float scale,
                               Tensor& dlogits) override {
    cudaStream_t stream = on_device(logits, targets, loss, lse, dlogits);
    return cuda::cross_entropy_with_grad(bf(logits), i32(targets), f32_mut(loss), f32_mut(lse), scale, bf_mut(dlogits),
                                         logits.size(0), logits.size(1), stream);
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    cudaStream_t stream = on_device(a, b, out);
    cuda::add_tensors(a.data(), b.data(), out.data(), float_type(a, "add"), a.numel(), stream);
  }

  void accumulate(Tensor& dst, const Tensor& src, float alpha) override {
    cudaStream_t stream = on_device(dst, src);
    cuda::accumulate(dst.data(), float_type(dst, "accumulate dst"), src.data(), float_type(src, "accumulate src"),
                     dst.numel(), alpha, stream);
  }

  void scale(Tensor& x, float alpha) override {
    cudaStream_t stream = on_device(x);
    cuda::scale_inplace(x.data(), float_type(x, "scale"), x.numel(), alpha, stream);
  }

  void cast(const Tensor& src, Tensor& dst) override {
    cudaStream_t stream = on_device(src, dst);
    cuda::cast_float(src.data(), float_type(src, "cast src"), dst.data(), float_type(dst, "cast dst"), src.numel(),
                     stream);
  }

  double sum(const Tensor& x) override {
    cudaStream_t stream = on_device(x);
    return cuda::sum_to_host(x.data(), float_type(x, "sum"), x.numel(), false, stream);
  }

  double sum_squares(const Tensor& x) override {
    cudaStream_t stream = on_device(x);
    return cuda::sum_to_host(x.data(), float_type(x, "sum_squares"), x.numel(), true, stream);
  }

  // out[C] (= or +=) the column sums of x[R,C]
  static void column_sums(const Tensor& x, Tensor& out, bool accumulate) {
    cudaStream_t stream = on_device(x, out);
    cuda::ColumnReduce p;
    p.a = x.data();
    p.in_type = float_type(x, "column_sum");
    p.rows = x.size(0);
    p.cols = x.size(1);
    p.out = out.data();
    p.out_type = float_type(out, "column_sum out");
    p.accumulate = accumulate;
    cuda::column_reduce(p, stream);
  }

  void row_entropy_accumulate(const Tensor& scores, Tensor& acc, double weight) override {
    cudaStream_t stream = on_device(scores, acc);
    cuda::row_entropy_accumulate(scores.data(), float_type(scores, "row_entropy_accumulate"), scores.size(0),
                                 scores.size(1), weight, acc.data_as<double>(), stream);
  }

  void column_sum(const Tensor& x, Tensor& out) override { column_sums(x, out, false); }

  void add_bias(Tensor& y, const Tensor& b) override {
    cudaStream_t stream = on_device(y, b);
    cuda::add_bias(y.data(), b.data(), float_type(y, "add_bias"), y.size(0), y.size(1), stream);
  }

  void bias_backward(const Tensor& dy, Tensor& db) override { column_sums(dy, db, true); }

  void gather_rows(const Tensor& src, const Tensor& index, Tensor& dst) override {
    cudaStream_t stream = on_device(src, index, dst);
    const int64_t row_bytes = cols_of(dst) * static_cast<int64_t>(dtype_size(dst.dtype()));
    cuda::gather_rows(src.data(), rows_of(src), i32(index), index.numel(), row_bytes, dst.data(), stream);
  }

  void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& dst) override {
    cudaStream_t stream = on_device(src, index, dst);
    if (src.dtype() == DType::i32) {
      cuda::scatter_add_rows_i32(i32(src), i32(index), index.numel(), cols_of(src), i32_mut(dst), rows_of(dst),
                                 stream);
      return;
    }
    cuda::scatter_add_rows(src.data(), float_type(src, "scatter_add src"), i32(index), index.numel(), cols_of(src),
                           dst.data(), float_type(dst, "scatter_add dst"), rows_of(dst), stream);
  }

  // The statistics come out of the router's own pass up to 256 experts; beyond that from a column
  // sum and a count after it.
  void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, Tensor& scores,
                           Tensor& ids, Tensor& weights, Tensor& score_sums, Tensor& counts) override {
    cudaStream_t stream = on_device(logits, scores, ids, weights);
    if (bias.defined()) check_same_device(bias, logits, "router bias");
    check_dtype(logits, DType::f32, "router logits on CUDA");
    const int64_t tokens = logits.size(0), experts = logits.size(1);
    const bool fused = score_sums.defined() && cuda::router_sums_fused(experts, options.num_groups);
    cuda::router_topk_forward(f32(logits), optional_f32(bias, "router bias on CUDA"), f32_mut(scores), i32_mut(ids),
                              f32_mut(weights), tokens, experts, options, stream,
                              fused ? f32_mut(score_sums) : nullptr, fused ? counts.data_as<int64_t>() : nullptr);
    if (fused || !score_sums.defined()) return;
    column_sums(scores, score_sums, false);
    cuda::memset_zero(counts.data(), static_cast<size_t>(experts) * sizeof(int64_t));
    cuda::count_experts(i32(ids), ids.numel(), experts, counts.data_as<int64_t>(), stream);
  }

  void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids, const Tensor& weights,
                            const Tensor& dweights, const Tensor& dscores, const Tensor& dscore_row,
                            const TopKOptions& options, Tensor& dlogits) override {
    cudaStream_t stream = on_device(logits, scores, ids, weights, dweights, dlogits);
    if (dscores.defined()) check_same_device(dscores, logits, "router dscores");
    check_dtype(logits, DType::f32, "router logits on CUDA");
    cuda::router_topk_backward(f32(logits), f32(scores), i32(ids), f32(weights), f32(dweights),
                               optional_f32(dscores, "router dscores on CUDA"),
                               optional_f32(dscore_row, "router dscore_row on CUDA"), f32_mut(dlogits),
                               logits.size(0), logits.size(1), options, stream);
  }

  void expert_choice_forward(const Tensor& scores, int64_t capacity, Tensor& ids, Tensor& weights) override {
    cudaStream_t stream = on_device(scores, ids, weights);
    check_dtype(scores, DType::f32, "expert choice scores on CUDA");
    cuda::expert_choice_forward(f32(scores), i32_mut(ids), f32_mut(weights), scores.size(0), scores.size(1), capacity,
                                stream);
  }

  void expert_choice_backward(const Tensor& ids, const Tensor& dweights, Tensor& dscores) override {
    cudaStream_t stream = on_device(dweights, ids, dscores);
    check_dtype(dweights, DType::f32, "expert choice dweights on CUDA");
    cuda::expert_choice_backward(i32(ids), f32(dweights), f32_mut(dscores), dweights.numel(), stream);
  }

  void apply_capacity_on_device(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity, DropOrder order,
                                Tensor& dropped) override {
    cudaStream_t stream = on_device(ids, weights, dropped);
    check_dtype(weights, DType::f32, "capacity weights on CUDA");
    cuda::apply_capacity(i32_mut(ids), f32_mut(weights), ids.size(0), ids.size(1), num_experts, capacity, order,
                         dropped.data_as<unsigned long long>(), nullptr, stream);
  }

  int64_t apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity,
                         DropOrder order) override {
    cudaStream_t stream = on_device(ids, weights);
    check_dtype(weights, DType::f32, "capacity weights on CUDA");
    return cuda::apply_capacity(i32_mut(ids), f32_mut(weights), ids.size(0), ids.size(1), num_experts, capacity,
                                order, stream);
  }

  void noisy_logits_forward(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, Tensor& h) override {
    cudaStream_t stream = on_device(clean, raw_noise, normal, h);
    check_dtype(clean, DType::f32, "noisy logits on CUDA");
    cuda::noisy_logits_forward(f32(clean), f32(raw_noise), f32(normal), f32_mut(h), clean.numel(), stream);
  }

  void noisy_logits_backward(const Tensor& raw_noise, const Tensor& normal, const Tensor& dh, Tensor& dclean,
                             Tensor& draw_noise) override {
    cudaStream_t stream = on_device(raw_noise, normal, dh, dclean, draw_noise);
    check_dtype(raw_noise, DType::f32, "noisy logits on CUDA");
    cuda::noisy_logits_backward(f32(raw_noise), f32(normal), f32(dh), f32_mut(dclean), f32_mut(draw_noise),
                                raw_noise.numel(), stream);
  }

  void row_gate_forward(const Tensor& x, const Tensor& gate, Tensor& y) override {
    cudaStream_t stream = on_device(x, gate, y);
    cuda::row_gate_forward(bf(x), bf(gate), bf_mut(y), x.size(0), x.size(1), stream);
  }

  void row_gate_backward(const Tensor& x, const Tensor& gate, const Tensor& dy, Tensor& dx, Tensor& dgate) override {
    cudaStream_t stream = on_device(x, gate, dy, dx, dgate);
    cuda::row_gate_backward(bf(x), bf(gate), bf(dy), bf_mut(dx), bf_mut(dgate), x.size(0), x.size(1), stream);
  }

  std::vector<int64_t> moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens,
                                          Tensor& slot_pos) override {
    cudaStream_t stream = on_device(ids, sorted_tokens, slot_pos);
    std::vector<int64_t> counts(static_cast<size_t>(num_experts > 0 ? num_experts : 0));
    cuda::moe_sort_by_expert(i32(ids), ids.size(0), ids.size(1), num_experts, i32_mut(sorted_tokens),
                             i32_mut(slot_pos), counts.data(), stream);
    return counts;
  }

  void moe_sort_by_expert_offsets(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens, Tensor& slot_pos,
                                  Tensor& offsets) override {
    cudaStream_t stream = on_device(ids, sorted_tokens, slot_pos, offsets);
    cuda::moe_sort_by_expert(i32(ids), ids.size(0), ids.size(1), num_experts, i32_mut(sorted_tokens),
                             i32_mut(slot_pos), i32_mut(offsets), stream);
  }

  void moe_permute_rows(const Tensor& ids, const Tensor& x, int64_t num_experts, Tensor& sorted_tokens,
                        Tensor& slot_pos, Tensor& offsets, Tensor& x_sorted) override {
    cudaStream_t stream = on_device(ids, x, sorted_tokens, slot_pos, offsets, x_sorted);
    const int64_t row_bytes = x.size(1) * static_cast<int64_t>(dtype_size(x.dtype()));
    cuda::moe_permute_rows(i32(ids), ids.size(0), ids.size(1), num_experts, x.data(), row_bytes,
                           i32_mut(sorted_tokens), i32_mut(slot_pos), i32_mut(offsets), x_sorted.data(),
                           x_sorted.size(0), stream);
  }

  void switch_balance(const Tensor& score_sums, const SlotCounts& c, double alpha, Tensor& value,
                      Tensor& grad_row) override {
    cudaStream_t stream = on_device(score_sums, c.ids.defined() ? c.ids : c.counts, value, grad_row);
    check_dtype(score_sums, DType::f32, "switch_balance score_sums");
    cuda::switch_balance(f32(score_sums), ids_of(c), counts_of(c), c.tokens, c.slots, score_sums.size(0), alpha,
                         value.data_as<double>(), f32_mut(grad_row), stream);
  }

  void device_balance(const Tensor& score_sums, const SlotCounts& c, int64_t groups, double alpha, Tensor& value,
                      Tensor& grad_row) override {
    cudaStream_t stream = on_device(score_sums, c.ids.defined() ? c.ids : c.counts, value, grad_row);
    check_dtype(score_sums, DType::f32, "device_balance score_sums");
    cuda::device_balance(f32(score_sums), ids_of(c), counts_of(c), c.tokens, c.slots, score_sums.size(0), groups,
                         alpha, value.data_as<double>(), f32_mut(grad_row), stream);
  }

  void importance_balance(const Tensor& weights, const Tensor& ids, int64_t num_experts, double coef, Tensor& value,
                          Tensor& dweights) override {
    cudaStream_t stream = on_device(weights, ids, value, dweights);
    check_dtype(weights, DType::f32, "importance_balance weights");
    cuda::importance_balance(f32(weights), i32(ids), ids.numel(), num_experts, coef, value.data_as<double>(),
                             f32_mut(dweights), stream);
  }

  void z_balance(const Tensor& logits, double coef, Tensor& value, Tensor& dlogits) override {
    cudaStream_t stream = on_device(logits, value, dlogits);
    check_dtype(logits, DType::f32, "z_balance logits");
    cuda::z_balance(f32(logits), logits.size(0), logits.size(1), coef, value.data_as<double>(), f32_mut(dlogits),
                    stream);
  }

  void seq_balance(const Tensor& scores, const Tensor& ids, int64_t seq_len, double coef, Tensor& value,
                   Tensor& dscores) override {
    cudaStream_t stream = on_device(scores, ids, value, dscores);
    check_dtype(scores, DType::f32, "seq_balance scores");
    cuda::seq_balance(f32(scores), i32(ids), scores.size(0), scores.size(1), ids.size(1), seq_len, coef,
                      value.data_as<double>(), f32_mut(dscores), stream);
  }

  void load_balance(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, int64_t k, double coef,
                    Tensor& value, Tensor& dclean, Tensor& draw_noise) override {
    cudaStream_t stream = on_device(clean, raw_noise, normal, value, dclean, draw_noise);
    check_dtype(clean, DType::f32, "load_balance clean");
    cuda::load_balance(f32(clean), f32(raw_noise), f32(normal), clean.size(0), clean.size(1), k, coef,
                       value.data_as<double>(), f32_mut(dclean), f32_mut(draw_noise), stream);
  }

  void count_experts(const Tensor& ids, int64_t num_experts, Tensor& counts) override {
    cudaStream_t stream = on_device(ids, counts);
    cuda::count_experts(i32(ids), ids.numel(), num_experts, counts.data_as<int64_t>(), stream);
  }

  void update_expert_bias(Tensor& bias, const Tensor& loads, double gamma, const Tensor& skip) override {
    cudaStream_t stream = skip.defined() ? on_device(bias, loads, skip) : on_device(bias, loads);
    check_dtype(bias, DType::f32, "update_expert_bias bias on CUDA");
    cuda::update_expert_bias(f32_mut(bias), loads.data_as<const int64_t>(), bias.numel(), gamma,
                             optional_f32(skip, "update_expert_bias skip"), stream);
  }

  // weights undefined: all 1 (the un-permute sum); k from slot_pos and the output's rows.
  void moe_combine_forward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights, Tensor& out,
                           const Tensor& add_a, const Tensor& add_b) override {
    cudaStream_t stream = weights.defined() ? on_device(y_sorted, slot_pos, weights, out)
                                            : on_device(y_sorted, slot_pos, out);
    const int64_t tokens = out.size(0), k = weights.defined() ? weights.size(1) : slot_pos.numel() / tokens;
    cuda::moe_combine_forward(bf(y_sorted), i32(slot_pos), weights.defined() ? f32(weights) : nullptr, bf_mut(out),
                              tokens, k, y_sorted.size(1), stream, optional_bf16(add_a), optional_bf16(add_b));
  }

  void moe_combine_backward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights,
                            const Tensor& dout, Tensor& dy_sorted, Tensor& dweights) override {
    cudaStream_t stream = on_device(y_sorted, slot_pos, weights, dout, dy_sorted, dweights);
    check_dtype(dout, DType::bf16, "combine dout");
    check_index(slot_pos, weights);
    cuda::moe_combine_backward(bf(y_sorted), i32(slot_pos), f32(weights), bf(dout), bf_mut(dy_sorted),
                               f32_mut(dweights), weights.size(0), weights.size(1), y_sorted.size(1),
                               y_sorted.size(0), stream);
  }

  void moe_combine_backward_unweighted(const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                                       Tensor& dy_sorted, Tensor& row_weights) override {
    cudaStream_t stream = on_device(slot_pos, weights, dout, dy_sorted, row_weights);
    check_index(slot_pos, weights);
    cuda::moe_combine_backward_unweighted(i32(slot_pos), f32(weights), bf(dout), bf_mut(dy_sorted),
                                          f32_mut(row_weights), weights.size(0), weights.size(1), dout.size(1),
                                          dy_sorted.size(0), stream);
  }

  void moe_scatter_rows(const Tensor& x, const Tensor& slot_pos, Tensor& x_sorted) override {
    cudaStream_t stream = on_device(x, slot_pos, x_sorted);
    const int64_t row_bytes = cols_of(x) * static_cast<int64_t>(dtype_size(x.dtype()));
    if (row_bytes == 0) return;
    cuda::moe_scatter_rows(x.data(), i32(slot_pos), x_sorted.data(), x.size(0),
                           x.size(0) > 0 ? slot_pos.numel() / x.size(0) : 1, row_bytes, x_sorted.size(0), stream);
  }

  void moe_gather_slots(const Tensor& row_values, const Tensor& slot_pos, Tensor& slot_values) override {
    cudaStream_t stream = on_device(row_values, slot_pos, slot_values);
    cuda::moe_gather_slots(f32(row_values), i32(slot_pos), f32_mut(slot_values), slot_pos.numel(), stream);
  }

  void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p) override {
    cudaStream_t stream = on_device(param, grad, m, v);
    check_dtype(param, DType::f32, "adamw params on CUDA");
    cuda::adamw_step(f32_mut(param), f32(grad), f32_mut(m), f32_mut(v), param.numel(), p, stream);
  }

  void adamw_fused(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const Tensor& runs,
                   const Tensor& grad_scale, const AdamWParams& p, Tensor& params) override {
    cudaStream_t stream = on_device(master, grad, m, v, runs);
    check_dtype(master, DType::f32, "adamw_fused master on CUDA");
    void* out = params.defined() ? params.data() : nullptr;
    const kernels::FloatType out_type = params.defined() ? float_type(params, "adamw_fused params") : kernels::FloatType::f32;
    cuda::adamw_fused(f32_mut(master), f32(grad), f32_mut(m), f32_mut(v), master.numel(), runs.data_as<const AdamWRun>(),
                      runs.size(0), optional_f32(grad_scale, "adamw_fused grad_scale"), p, out, out_type, stream);
  }

  void sum_accumulate(const Tensor& x, Tensor& acc, bool squares, double weight) override {
    cudaStream_t stream = on_device(x, acc);
    cuda::sum_accumulate(x.data(), float_type(x, "sum_accumulate"), x.numel(), squares, weight, acc.data_as<double>(),
                         stream);
  }

  void clip_scale(const Tensor& sum_sq, double max_norm, Tensor& scale) override {
    cudaStream_t stream = on_device(sum_sq, scale);
    cuda::clip_scale(sum_sq.data_as<const double>(), sum_sq.numel(), max_norm, f32_mut(scale), stream);
  }

  void record_skipped_step(const Tensor& scale, Tensor& state, int64_t step) override {
    cudaStream_t stream = on_device(scale, state);
    cuda::record_skipped_step(scale.data_as<const float>(), state.data_as<double>(), step, stream);
  }

 private:
  static void check_index(const Tensor& slot_pos, const Tensor& weights) {
    check_shape(slot_pos, {weights.numel()}, "combine slot_pos");
    check_dtype(slot_pos, DType::i32, "combine slot_pos");
  }
};

}  // namespace

Backend& cuda_backend() {
  static CudaBackend backend;
  return backend;
}

}  // namespace moe::ops

#endif  // MOE_WITH_CUDA

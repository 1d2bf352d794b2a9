// The device backends behind ops.h. ops.cpp checks shapes and dtypes once, then calls the
// backend of the tensors' device; a backend maps tensors to pointers and launches kernels.
#pragma once

#include <source_location>

#include "src/ops/op_profile.h"
#include "src/ops/ops.h"

namespace moe::ops {

// A tensor as rows: dim 0 (1 for a scalar) ...
inline int64_t rows_of(const Tensor& t) { return t.ndim() == 0 ? 1 : t.size(0); }
// ... of the product of the dims after the first elements (also for a tensor with 0 rows).
inline int64_t cols_of(const Tensor& t) {
  int64_t cols = 1;
  for (int d = 1; d < t.ndim(); ++d) cols *= t.size(d);
  return cols;
}

// The slots per expert a per-expert balancing term reads: counted from ids i32[T,k] (defined), or
// given as counts i64[E] over `tokens` tokens of `slots` slots each.
struct SlotCounts {
  Tensor ids, counts;
  int64_t tokens = 0, slots = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
                      float beta) = 0;
  virtual void grouped_matmul(const Tensor& x, const Tensor& offsets, const Tensor& w, bool trans_w, Tensor& y) = 0;
  virtual void grouped_matmul_weight_grad(const Tensor& x, const Tensor& offsets, const Tensor& dy, Tensor& dw,
                                          bool accumulate) = 0;
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, VocabShard shard) = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, VocabShard shard) = 0;
  // doc_starts: checked by ops.cpp, or undefined (so for rope and attention).
  virtual void position_add_forward(Tensor& x, const Tensor& pos, int64_t seq_len, const Tensor& doc_starts) = 0;
  virtual void position_add_backward(const Tensor& dx, Tensor& dpos, int64_t seq_len, const Tensor& doc_starts) = 0;
  // delta, h: undefined for a plain norm; dresidual: undefined when there is none.
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& h, const Tensor& w, Tensor& y,
                               Tensor& rstd, float eps) = 0;
  virtual void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                                const Tensor& dresidual, Tensor& dx, Tensor& dw) = 0;
  virtual void layernorm_forward(const Tensor& x, const Tensor& delta, Tensor& h, const Tensor& w, const Tensor& b,
                                 Tensor& y, Tensor& mean, Tensor& rstd, float eps) = 0;
  virtual void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                  const Tensor& dy, const Tensor& dresidual, Tensor& dx, Tensor& dw, Tensor& db) = 0;
  virtual void rope(Tensor& x, int64_t num_heads, int64_t seq_len, float theta, bool inverse,
                    const Tensor& doc_starts, const RopeScaling& scaling) = 0;
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                                 const AttentionShape& shape, const Tensor& doc_starts) = 0;
  // Cached decoding (kv_cache_ops.h; shapes checked there).
  virtual void rope_at(Tensor& x, int64_t num_heads, const Tensor& positions, float theta,
                       const RopeScaling& scaling) = 0;
  virtual void kv_cache_write(const Tensor& rows, const Tensor& positions, Tensor& cache) = 0;
  virtual void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                                Tensor& out) = 0;
  virtual int64_t attention_workspace_numel(const AttentionShape& shape) = 0;
  // workspace: checked by ops.cpp (f32, on q's device, large enough) or undefined
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                                  const AttentionShape& shape, const Tensor& workspace,
                                  const Tensor& doc_starts) = 0;
  virtual void activation_forward(Activation act, const Tensor& x, Tensor& y) = 0;
  virtual void activation_backward(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx) = 0;
  // row_weights / drow_weights undefined: all 1 / not computed (activation_backward_and_output)
  virtual void activation_backward_weighted(Activation act, const Tensor& x, const Tensor& g,
                                            const Tensor& row_weights, Tensor& dx, Tensor& a_weighted,
                                            Tensor& drow_weights) = 0;
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse,
                                     VocabShard shard) = 0;
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, float scale,
                                      Tensor& dlogits, VocabShard shard) = 0;
  // Forward and backward in one pass where the backend has one for these operands; false (nothing
  // run) sends the caller to cross_entropy_forward and cross_entropy_backward.
  virtual bool cross_entropy_with_grad(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse,
                                       float scale, Tensor& dlogits) = 0;
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void accumulate(Tensor& dst, const Tensor& src, float alpha) = 0;
  virtual void scale(Tensor& x, float alpha) = 0;
  virtual void cast(const Tensor& src, Tensor& dst) = 0;
  virtual double sum(const Tensor& x) = 0;
  virtual double sum_squares(const Tensor& x) = 0;
  virtual void column_sum(const Tensor& x, Tensor& out) = 0;
  virtual void row_entropy_accumulate(const Tensor& scores, Tensor& acc, double weight) = 0;
  virtual void add_bias(Tensor& y, const Tensor& b) = 0;
  virtual void bias_backward(const Tensor& dy, Tensor& db) = 0;
  virtual void gather_rows(const Tensor& src, const Tensor& index, Tensor& dst) = 0;
  virtual void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& dst) = 0;
  // score_sums, counts: both undefined (not wanted) or both to be written.
  virtual void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options,
                                   Tensor& scores, Tensor& ids, Tensor& weights, Tensor& score_sums,
                                   Tensor& counts) = 0;
  virtual void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids,
                                    const Tensor& weights, const Tensor& dweights, const Tensor& dscores,
                                    const Tensor& dscore_row, const TopKOptions& options, Tensor& dlogits) = 0;
  virtual void expert_choice_forward(const Tensor& scores, int64_t capacity, Tensor& ids, Tensor& weights) = 0;
  virtual void expert_choice_backward(const Tensor& ids, const Tensor& dweights, Tensor& dscores) = 0;
  virtual void apply_capacity_on_device(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity,
                                        DropOrder order, Tensor& dropped) = 0;
  virtual int64_t apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity,
                                 DropOrder order) = 0;
  virtual void noisy_logits_forward(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal,
                                    Tensor& h) = 0;
  virtual void noisy_logits_backward(const Tensor& raw_noise, const Tensor& normal, const Tensor& dh, Tensor& dclean,
                                     Tensor& draw_noise) = 0;
  virtual void row_gate_forward(const Tensor& x, const Tensor& gate, Tensor& y) = 0;
  virtual void row_gate_backward(const Tensor& x, const Tensor& gate, const Tensor& dy, Tensor& dx,
                                 Tensor& dgate) = 0;
  virtual std::vector<int64_t> moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens,
                                                  Tensor& slot_pos) = 0;
  virtual void moe_sort_by_expert_offsets(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens,
                                          Tensor& slot_pos, Tensor& offsets) = 0;
  virtual void moe_permute_rows(const Tensor& ids, const Tensor& x, int64_t num_experts, Tensor& sorted_tokens,
                                Tensor& slot_pos, Tensor& offsets, Tensor& x_sorted) = 0;
  virtual void switch_balance(const Tensor& score_sums, const SlotCounts& counts, double alpha, Tensor& value,
                              Tensor& grad_row) = 0;
  virtual void device_balance(const Tensor& score_sums, const SlotCounts& counts, int64_t groups, double alpha,
                              Tensor& value, Tensor& grad_row) = 0;
  virtual void importance_balance(const Tensor& weights, const Tensor& ids, int64_t num_experts, double coef,
                                  Tensor& value, Tensor& dweights) = 0;
  virtual void z_balance(const Tensor& logits, double coef, Tensor& value, Tensor& dlogits) = 0;
  virtual void seq_balance(const Tensor& scores, const Tensor& ids, int64_t seq_len, double coef, Tensor& value,
                           Tensor& dscores) = 0;
  virtual void load_balance(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, int64_t k,
                            double coef, Tensor& value, Tensor& dclean, Tensor& draw_noise) = 0;
  virtual void count_experts(const Tensor& ids, int64_t num_experts, Tensor& counts) = 0;
  virtual void update_expert_bias(Tensor& bias, const Tensor& loads, double gamma, const Tensor& skip) = 0;
  // add_a, add_b: [T,d] like out, or undefined (none).
  virtual void moe_combine_forward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights,
                                   Tensor& out, const Tensor& add_a, const Tensor& add_b) = 0;
  virtual void moe_combine_backward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights,
                                    const Tensor& dout, Tensor& dy_sorted, Tensor& dweights) = 0;
  virtual void moe_combine_backward_unweighted(const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                                               Tensor& dy_sorted, Tensor& row_weights) = 0;
  virtual void moe_scatter_rows(const Tensor& x, const Tensor& slot_pos, Tensor& x_sorted) = 0;
  virtual void moe_gather_slots(const Tensor& row_values, const Tensor& slot_pos, Tensor& slot_values) = 0;
  virtual void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p) = 0;
  virtual void adamw_fused(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const Tensor& runs,
                           const Tensor& grad_scale, const AdamWParams& p, Tensor& params) = 0;
  virtual void sum_accumulate(const Tensor& x, Tensor& acc, bool squares, double weight) = 0;
  virtual void clip_scale(const Tensor& sum_sq, double max_norm, Tensor& scale) = 0;
  virtual void record_skipped_step(const Tensor& scale, Tensor& state, int64_t step) = 0;
};

Backend& cpu_backend();
#if MOE_WITH_CUDA
Backend& cuda_backend();
#endif

// Contract helpers of the op files (ops.cpp, balance_ops.cpp): t has like's shape, dtype and
// device; t is i32 of `shape` on like's device.
void check_like(const Tensor& t, const Tensor& like, const char* name);
void check_index(const Tensor& t, const Shape& shape, const Tensor& like, const char* name);

// The backend of t's device; the call it makes is timed as one op of `kind`, named after the
// calling op's function, while a profile is installed (the temporary, and its scope, live until
// the end of the calling expression).
struct TimedBackend {
  OpScope scope;
  Backend& backend;
  Backend* operator->() { return &backend; }
};
TimedBackend run_on(const Tensor& t, OpKind kind, std::source_location caller = std::source_location::current());

}  // namespace moe::ops

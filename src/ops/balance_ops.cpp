// Shape and dtype contracts of the balancing ops (the losses, the expert counts, the bias
// update), checked once here, then dispatched to the backend of the tensors' device.
#include "src/ops/backend.h"
#include "src/ops/ops.h"

namespace moe::ops {

namespace {

// value: f64[1] on like's device.
void check_value(const Tensor& value, const Tensor& like, const char* op) {
  MOE_CHECK(value.defined() && value.ndim() == 1 && value.size(0) == 1 && value.dtype() == DType::f64, op,
            ": value must be f64[1], got ", value.defined() ? dtype_name(value.dtype()) : "undefined",
            value.defined() ? shape_str(value.shape()) : "");
  check_same_device(value, like, op);
}

void check_matrix(const Tensor& t, const char* what) {
  MOE_CHECK(t.defined() && t.ndim() == 2, what, " must be 2-d [T,*], got ",
            t.defined() ? shape_str(t.shape()) : "undefined");
}

// score_sums [E], ids i32[T,k] on its device, grad_row like score_sums.
void check_sums_term(const Tensor& score_sums, const Tensor& ids, const Tensor& value, const Tensor& grad_row,
                     const char* op) {
  MOE_CHECK(score_sums.ndim() == 1 && ids.ndim() == 2 && ids.dtype() == DType::i32, op,
            ": score_sums must be [E] and ids i32[T,k]");
  check_index(ids, {ids.size(0), ids.size(1)}, score_sums, op);
  check_value(value, score_sums, op);
  check_like(grad_row, score_sums, op);
}

// score_sums [E], counts i64[E] on its device, tokens >= 0, slots >= 1, grad_row like score_sums.
SlotCounts check_counts_term(const Tensor& score_sums, const Tensor& counts, int64_t tokens, int64_t slots,
                             const Tensor& value, const Tensor& grad_row, const char* op) {
  MOE_CHECK(score_sums.defined() && score_sums.ndim() == 1, op, ": score_sums must be [E]");
  check_shape(counts, score_sums.shape(), op);
  check_dtype(counts, DType::i64, op);
  check_same_device(counts, score_sums, op);
  MOE_CHECK(tokens >= 0 && slots >= 1, op, ": needs tokens >= 0 and slots >= 1, got ", tokens, " and ", slots);
  check_value(value, score_sums, op);
  check_like(grad_row, score_sums, op);
  return {.ids = Tensor(), .counts = counts, .tokens = tokens, .slots = slots};
}

SlotCounts counted_from(const Tensor& ids) {
  return {.ids = ids, .counts = Tensor(), .tokens = ids.size(0), .slots = ids.size(1)};
}

void check_groups(const Tensor& score_sums, int64_t groups) {
  MOE_CHECK(groups >= 1 && score_sums.size(0) % groups == 0, "device_balance: groups = ", groups,
            " does not divide experts = ", score_sums.size(0));
}

}  // namespace

void switch_balance(const Tensor& score_sums, const Tensor& ids, double alpha, Tensor& value, Tensor& grad_row) {
  check_sums_term(score_sums, ids, value, grad_row, "switch_balance");
  run_on(score_sums, OpKind::routing)->switch_balance(score_sums, counted_from(ids), alpha, value, grad_row);
}

void switch_balance_from_counts(const Tensor& score_sums, const Tensor& counts, int64_t tokens, int64_t slots,
                                double alpha, Tensor& value, Tensor& grad_row) {
  const SlotCounts c = check_counts_term(score_sums, counts, tokens, slots, value, grad_row, "switch_balance");
  run_on(score_sums, OpKind::routing)->switch_balance(score_sums, c, alpha, value, grad_row);
}

void device_balance(const Tensor& score_sums, const Tensor& ids, int64_t groups, double alpha, Tensor& value,
                    Tensor& grad_row) {
  check_sums_term(score_sums, ids, value, grad_row, "device_balance");
  check_groups(score_sums, groups);
  run_on(score_sums, OpKind::routing)->device_balance(score_sums, counted_from(ids), groups, alpha, value, grad_row);
}

void device_balance_from_counts(const Tensor& score_sums, const Tensor& counts, int64_t tokens, int64_t slots,
                                int64_t groups, double alpha, Tensor& value, Tensor& grad_row) {
  const SlotCounts c = check_counts_term(score_sums, counts, tokens, slots, value, grad_row, "device_balance");
  check_groups(score_sums, groups);
  run_on(score_sums, OpKind::routing)->device_balance(score_sums, c, groups, alpha, value, grad_row);
}

void importance_balance(const Tensor& weights, const Tensor& ids, int64_t num_experts, double coef, Tensor& value,
                        Tensor& dweights) {
  check_matrix(weights, "importance_balance weights");
  check_index(ids, weights.shape(), weights, "importance_balance ids");
  MOE_CHECK(num_experts >= 1, "importance_balance: expert count must be positive, got ", num_experts);
  check_value(value, weights, "importance_balance");
  check_like(dweights, weights, "importance_balance dweights");
  run_on(weights, OpKind::routing)->importance_balance(weights, ids, num_experts, coef, value, dweights);
}

void z_balance(const Tensor& logits, double coef, Tensor& value, Tensor& dlogits) {
  check_matrix(logits, "z_balance logits");
  check_value(value, logits, "z_balance");
  check_like(dlogits, logits, "z_balance dlogits");
  run_on(logits, OpKind::routing)->z_balance(logits, coef, value, dlogits);
}

void seq_balance(const Tensor& scores, const Tensor& ids, int64_t seq_len, double coef, Tensor& value,
                 Tensor& dscores) {
  check_matrix(scores, "seq_balance scores");
  check_matrix(ids, "seq_balance ids");
  check_index(ids, {scores.size(0), ids.size(1)}, scores, "seq_balance ids");
  MOE_CHECK(seq_len >= 1 && scores.size(0) % seq_len == 0, "seq_balance: seq_len = ", seq_len,
            " does not divide tokens = ", scores.size(0));
  check_value(value, scores, "seq_balance");
  check_like(dscores, scores, "seq_balance dscores");
  run_on(scores, OpKind::routing)->seq_balance(scores, ids, seq_len, coef, value, dscores);
}

void load_balance(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, int64_t k, double coef,
                  Tensor& value, Tensor& dclean, Tensor& draw_noise) {
  check_matrix(clean, "load_balance clean");
  check_like(raw_noise, clean, "load_balance raw_noise");
  check_like(normal, clean, "load_balance normal");
  MOE_CHECK(k >= 1 && k < clean.size(1), "load_balance: needs 1 <= k < E (the k-th largest of the other E-1 "
            "experts), got k = ", k, ", E = ", clean.size(1));
  check_value(value, clean, "load_balance");
  check_like(dclean, clean, "load_balance dclean");
  check_like(draw_noise, clean, "load_balance draw_noise");
  run_on(clean, OpKind::routing)->load_balance(clean, raw_noise, normal, k, coef, value, dclean, draw_noise);
}

void count_experts(const Tensor& ids, int64_t num_experts, Tensor& counts) {
  MOE_CHECK(ids.defined() && ids.dtype() == DType::i32, "count_experts: ids must be i32");
  MOE_CHECK(num_experts >= 1, "count_experts: expert count must be positive, got ", num_experts);
  check_shape(counts, {num_experts}, "count_experts counts");
  check_dtype(counts, DType::i64, "count_experts counts");
  check_same_device(counts, ids, "count_experts counts");
  run_on(ids, OpKind::routing)->count_experts(ids, num_experts, counts);
}

void update_expert_bias(Tensor& bias, const Tensor& loads, double gamma, const Tensor& skip) {
  MOE_CHECK(bias.defined() && bias.ndim() == 1, "update_expert_bias: bias must be [E]");
  check_shape(loads, bias.shape(), "update_expert_bias loads");
  check_dtype(loads, DType::i64, "update_expert_bias loads");
  check_same_device(loads, bias, "update_expert_bias loads");
  if (skip.defined()) {
    check_shape(skip, {1}, "update_expert_bias skip");
    check_dtype(skip, DType::f32, "update_expert_bias skip");
    check_same_device(skip, bias, "update_expert_bias skip");
  }
  run_on(bias, OpKind::optimizer)->update_expert_bias(bias, loads, gamma, skip);
}

}  // namespace moe::ops

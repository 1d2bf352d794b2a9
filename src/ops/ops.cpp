// Shape and dtype contracts of every op, checked once here, then dispatched to the backend
// of the tensors' device.
#include "src/ops/ops.h"

#include <cstdint>

#include "src/ops/backend.h"
#include "src/ops/op_profile.h"

namespace moe::ops {

namespace {

Backend& backend_for_device(Device device) {
  if (!device.is_cuda()) return cpu_backend();
#if MOE_WITH_CUDA
  return cuda_backend();
#else
  MOE_FAIL("tensor on ", device.str(), " but this build has no CUDA backend");
#endif
}

Backend& backend_for(const Tensor& t) { return backend_for_device(t.device()); }

void check_compute(const Tensor& t, const char* name) {
  MOE_CHECK(t.defined(), name, " is undefined");
  if (t.is_cuda()) {
    check_dtype(t, DType::bf16, name);
  } else {
    MOE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, name, " must be f32 or f64 on the CPU, got ",
              dtype_name(t.dtype()));
  }
}

void check_accum(const Tensor& t, const Tensor& like, const char* name) {
  MOE_CHECK(t.defined(), name, " is undefined");
  check_dtype(t, accum_dtype(like.dtype()), name);
  check_same_device(t, like, name);
}

// The shard covers ids [start, start + local) inside [0, full); unsharded: start 0.
void check_shard(VocabShard shard, int64_t local, const char* op) {
  if (shard.full == 0) {
    MOE_CHECK(shard.start == 0, op, ": an unsharded vocabulary must start at 0, got start ", shard.start);
    return;
  }
  MOE_CHECK(shard.full > 0 && shard.start >= 0 && shard.start + local <= shard.full, op, ": vocabulary shard [",
            shard.start, ",", shard.start + local, ") is outside the vocabulary [0,", shard.full, ")");
}

}  // namespace

void check_like(const Tensor& t, const Tensor& like, const char* name) {
  check_shape(t, like.shape(), name);
  check_dtype(t, like.dtype(), name);
  check_same_device(t, like, name);
}

void check_index(const Tensor& t, const Shape& shape, const Tensor& like, const char* name) {
  check_shape(t, shape, name);
  check_dtype(t, DType::i32, name);
  check_same_device(t, like, name);
}

TimedBackend run_on(const Tensor& t, OpKind kind, std::source_location caller) {
  return {OpScope(kind, t, caller.function_name()), backend_for(t)};
}

const char* activation_name(Activation act) {
  switch (act) {
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
    case Activation::geglu: return "geglu";
    case Activation::swiglu: return "swiglu";
  }
  return "?";
}

Activation activation_from_name(const std::string& name) {
  for (Activation a : {Activation::relu, Activation::gelu, Activation::geglu, Activation::swiglu}) {
    if (name == activation_name(a)) return a;
  }
  MOE_FAIL("unknown activation '", name, "' (expected relu, gelu, geglu or swiglu)");
}

void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  MOE_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "matmul takes 2-d tensors, got ", shape_str(a.shape()),
            " ", shape_str(b.shape()), " ", shape_str(c.shape()));
  check_compute(a, "matmul a");
  check_dtype(b, a.dtype(), "matmul b");
  MOE_CHECK(c.dtype() == a.dtype() || c.dtype() == accum_dtype(a.dtype()), "matmul c has dtype ",
            dtype_name(c.dtype()));
  check_same_device(a, b, "matmul");
  check_same_device(a, c, "matmul");
  int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
  int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  MOE_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "matmul shapes: op(a)[", m, ",", k, "] op(b)[", kb, ",", n,
            "] c", shape_str(c.shape()));
  if (m == 0 || n == 0) return;
  run_on(a, OpKind::gemm)->matmul(a, trans_a, b, trans_b, c, alpha, beta);
}

namespace {

// offsets i32[E+1] on x's device; returns E.
int64_t check_offsets(const Tensor& offsets, const Tensor& x, const char* op) {
  MOE_CHECK(offsets.defined() && offsets.ndim() == 1 && offsets.size(0) >= 2, op,
            ": offsets must be i32[E+1] with E >= 1, got ",
            offsets.defined() ? shape_str(offsets.shape()) : std::string("undefined"));
  check_dtype(offsets, DType::i32, op);
  check_same_device(offsets, x, op);
  return offsets.size(0) - 1;
}

// Tensor-core tiles move 16-byte chunks: the widths of the GPU grouped GEMM are multiples of 8.
void check_grouped_widths(const Tensor& x, int64_t k, int64_t m, const char* op) {
  if (!x.is_cuda()) return;
  MOE_CHECK(k % 8 == 0 && m % 8 == 0, op, " on CUDA: widths ", k, " and ", m, " must be multiples of 8");
}

}  // namespace

void grouped_matmul(const Tensor& x, const Tensor& offsets, const Tensor& w, bool trans_w, Tensor& y) {
  check_compute(x, "grouped_matmul x");
  const int64_t num_experts = check_offsets(offsets, x, "grouped_matmul");
  check_dtype(w, x.dtype(), "grouped_matmul w");
  check_same_device(w, x, "grouped_matmul w");
  MOE_CHECK(x.ndim() == 2 && w.ndim() == 3 && w.size(0) == num_experts, "grouped_matmul: x[N,K] and w[E,K,M] for ",
            num_experts, " experts, got x", shape_str(x.shape()), " w", shape_str(w.shape()));
  const int64_t k = trans_w ? w.size(2) : w.size(1), m = trans_w ? w.size(1) : w.size(2);
  MOE_CHECK(x.size(1) == k, "grouped_matmul: x", shape_str(x.shape()), " does not match w", shape_str(w.shape()),
            trans_w ? " (transposed)" : "");
  check_shape(y, {x.size(0), m}, "grouped_matmul y");
  check_dtype(y, x.dtype(), "grouped_matmul y");
  check_same_device(y, x, "grouped_matmul y");
  check_grouped_widths(x, k, m, "grouped_matmul");
  if (x.size(0) == 0 || m == 0) return;
  run_on(x, OpKind::gemm)->grouped_matmul(x, offsets, w, trans_w, y);
}

void grouped_matmul_weight_grad(const Tensor& x, const Tensor& offsets, const Tensor& dy, Tensor& dw,
                                bool accumulate) {
  check_compute(x, "grouped_matmul_weight_grad x");
  const int64_t num_experts = check_offsets(offsets, x, "grouped_matmul_weight_grad");
  check_dtype(dy, x.dtype(), "grouped_matmul_weight_grad dy");
  check_same_device(dy, x, "grouped_matmul_weight_grad dy");
  check_accum(dw, x, "grouped_matmul_weight_grad dw");
  MOE_CHECK(x.ndim() == 2 && dy.ndim() == 2 && x.size(0) == dy.size(0),
            "grouped_matmul_weight_grad: x[N,K] and dy[N,M], got x", shape_str(x.shape()), " dy",
            shape_str(dy.shape()));
  check_shape(dw, {num_experts, x.size(1), dy.size(1)}, "grouped_matmul_weight_grad dw");
  check_grouped_widths(x, x.size(1), dy.size(1), "grouped_matmul_weight_grad");
  if (x.size(1) == 0 || dy.size(1) == 0) return;
  if (x.size(0) == 0) {
    if (!accumulate) dw.zero_();
    return;
  }
  run_on(x, OpKind::gemm)->grouped_matmul_weight_grad(x, offsets, dy, dw, accumulate);
}

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, VocabShard shard) {
  check_compute(table, "embedding table");
  MOE_CHECK(table.ndim() == 2, "embedding table must be [V,d]");
  check_index(ids, {ids.numel()}, table, "embedding ids");
  check_shape(out, {ids.numel(), table.size(1)}, "embedding out");
  check_dtype(out, table.dtype(), "embedding out");
  check_shard(shard, table.size(0), "embedding");
  run_on(table, OpKind::embedding)->embedding_forward(ids, table, out, shard);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, VocabShard shard) {
  check_compute(dout, "embedding dout");
  check_index(ids, {dout.size(0)}, dout, "embedding ids");
  check_accum(dtable, dout, "embedding dtable");
  MOE_CHECK(dtable.ndim() == 2 && dtable.size(1) == dout.size(1), "embedding dtable shape ", shape_str(dtable.shape()));
  check_shard(shard, dtable.size(0), "embedding");
  run_on(dout, OpKind::embedding)->embedding_backward(ids, dout, dtable, shard);
}

namespace {

// doc_starts (when defined): i32[tokens] on like's device; on the CPU also its structure (ops.h):
// 0 at a sequence's first token, then the previous token's value or the token's own position.
void check_doc_starts(const Tensor& doc_starts, int64_t tokens, int64_t seq_len, const Tensor& like, const char* op) {
  if (!doc_starts.defined()) return;
  const std::string name = std::string(op) + " doc_starts";
  check_index(doc_starts, {tokens}, like, name.c_str());
  if (doc_starts.is_cuda()) return;  // built by the model; reading it here would wait for the device
  const int32_t* starts = doc_starts.data_as<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t i = t % seq_len, v = starts[t];
    const bool ok = i == 0 ? v == 0 : (v == starts[t - 1] || v == i);
    MOE_CHECK(ok, name, "[", t, "] = ", v, " at position ", i, " of its sequence: expected ",
              i == 0 ? "0" : "the previous token's start or " + std::to_string(i));
  }
}

}  // namespace

void position_add_forward(Tensor& x, const Tensor& pos, int64_t seq_len, const Tensor& doc_starts) {
  check_compute(x, "positions x");
  check_dtype(pos, x.dtype(), "positions table");
  MOE_CHECK(pos.ndim() == 2 && pos.size(1) == x.size(1) && seq_len <= pos.size(0) && seq_len > 0 &&
                x.size(0) % seq_len == 0,
            "positions: x", shape_str(x.shape()), " table", shape_str(pos.shape()), " seq_len ", seq_len);
  check_doc_starts(doc_starts, x.size(0), seq_len, x, "positions");
  run_on(x, OpKind::embedding)->position_add_forward(x, pos, seq_len, doc_starts);
}

void position_add_backward(const Tensor& dx, Tensor& dpos, int64_t seq_len, const Tensor& doc_starts) {
  check_compute(dx, "positions dx");
  check_accum(dpos, dx, "positions dtable");
  MOE_CHECK(dpos.ndim() == 2 && dpos.size(1) == dx.size(1) && seq_len <= dpos.size(0) && seq_len > 0 &&
                dx.size(0) % seq_len == 0,
            "positions backward shapes");
  check_doc_starts(doc_starts, dx.size(0), seq_len, dx, "positions backward");
  run_on(dx, OpKind::embedding)->position_add_backward(dx, dpos, seq_len, doc_starts);
}

namespace {

// The shapes common to the norms' forward: x[T,d] compute, w[d] (and b), y like x, statistics [T] accum.
void check_norm_forward(const Tensor& x, const Tensor& w, const Tensor& y, const Tensor& rstd, const char* op) {
  const std::string name(op);
  check_compute(x, (name + " x").c_str());
  MOE_CHECK(x.ndim() == 2, op, " x must be [T,d]");
  check_shape(w, {x.size(1)}, (name + " w").c_str());
  check_dtype(w, x.dtype(), (name + " w").c_str());
  check_like(y, x, (name + " y").c_str());
  check_shape(rstd, {x.size(0)}, (name + " rstd").c_str());
  check_accum(rstd, x, (name + " rstd").c_str());
}

// The fused residual add: delta and h shaped like x.
void check_residual(const Tensor& x, const Tensor& delta, const Tensor& h, const char* op) {
  const std::string name(op);
  MOE_CHECK(delta.defined(), op, " delta is undefined");
  MOE_CHECK(h.defined(), op, " h is undefined");
  check_like(delta, x, (name + " delta").c_str());
  check_like(h, x, (name + " h").c_str());
}

// Whether two tensors share any bytes (on one device; an empty tensor shares none).
bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0 || a.device() != b.device()) return false;
  const auto pa = reinterpret_cast<uintptr_t>(a.data()), pb = reinterpret_cast<uintptr_t>(b.data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

void check_norm_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                         const Tensor& dresidual, const char* op) {
  const std::string name(op);
  check_compute(x, (name + " x").c_str());
  check_like(dy, x, (name + " dy").c_str());
  check_like(dx, x, (name + " dx").c_str());
  check_shape(dw, w.shape(), (name + " dw").c_str());
  check_accum(dw, x, (name + " dw").c_str());
  if (dresidual.defined()) check_like(dresidual, x, (name + " dresidual").c_str());
  // A row's later columns may be written while its earlier ones still read x and dy (CUDA).
  MOE_CHECK(!overlaps(dx, x), name, "_backward: dx overlaps x (only dresidual may be dx)");
  MOE_CHECK(!overlaps(dx, dy), name, "_backward: dx overlaps dy (only dresidual may be dx)");
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, Tensor& y, Tensor& rstd, float eps) {
  check_norm_forward(x, w, y, rstd, "rmsnorm");
  Tensor none;
  run_on(x, OpKind::norm)->rmsnorm_forward(x, Tensor(), none, w, y, rstd, eps);
}

void add_rmsnorm_forward(const Tensor& x, const Tensor& delta, const Tensor& w, Tensor& h, Tensor& y, Tensor& rstd,
                         float eps) {
  check_norm_forward(x, w, y, rstd, "add_rmsnorm");
  check_residual(x, delta, h, "add_rmsnorm");
  run_on(x, OpKind::norm)->rmsnorm_forward(x, delta, h, w, y, rstd, eps);
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dw,
                      const Tensor& dresidual) {
  check_norm_backward(x, w, dy, dx, dw, dresidual, "rmsnorm");
  check_shape(rstd, {x.size(0)}, "rmsnorm rstd");
  run_on(x, OpKind::norm)->rmsnorm_backward(x, w, rstd, dy, dresidual, dx, dw);
}

void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y, Tensor& mean, Tensor& rstd,
                       float eps) {
  check_norm_forward(x, w, y, rstd, "layernorm");
  check_like(b, w, "layernorm b");
  check_like(mean, rstd, "layernorm mean");
  Tensor none;
  run_on(x, OpKind::norm)->layernorm_forward(x, Tensor(), none, w, b, y, mean, rstd, eps);
}

void add_layernorm_forward(const Tensor& x, const Tensor& delta, const Tensor& w, const Tensor& b, Tensor& h,
                           Tensor& y, Tensor& mean, Tensor& rstd, float eps) {
  check_norm_forward(x, w, y, rstd, "add_layernorm");
  check_like(b, w, "add_layernorm b");
  check_like(mean, rstd, "add_layernorm mean");
  check_residual(x, delta, h, "add_layernorm");
  run_on(x, OpKind::norm)->layernorm_forward(x, delta, h, w, b, y, mean, rstd, eps);
}

void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                        Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dresidual) {
  check_norm_backward(x, w, dy, dx, dw, dresidual, "layernorm");
  check_like(db, dw, "layernorm db");
  run_on(x, OpKind::norm)->layernorm_backward(x, w, mean, rstd, dy, dresidual, dx, dw, db);
}

void rope(Tensor& x, int64_t num_heads, int64_t seq_len, float theta, bool inverse, const Tensor& doc_starts,
          const RopeScaling& scaling) {
  check_compute(x, "rope x");
  MOE_CHECK(x.ndim() == 2 && num_heads > 0 && x.size(1) % num_heads == 0 && (x.size(1) / num_heads) % 2 == 0,
            "rope: x", shape_str(x.shape()), " with ", num_heads, " heads needs an even head dim");
  MOE_CHECK(seq_len > 0 && x.size(0) % seq_len == 0, "rope: ", x.size(0), " rows are not whole sequences of ", seq_len);
  check_doc_starts(doc_starts, x.size(0), seq_len, x, "rope");
  MOE_CHECK(scaling.kind == RopeScalingKind::none || scaling.factor > 0, "rope: scaling factor ", scaling.factor,
            " must be positive");
  MOE_CHECK(scaling.kind != RopeScalingKind::llama3 ||
                (scaling.high_freq_factor > scaling.low_freq_factor && scaling.low_freq_factor > 0 &&
                 scaling.original_max_positions > 0),
            "rope: llama3 scaling needs 0 < low_freq_factor < high_freq_factor and original_max_positions > 0");
  run_on(x, OpKind::elementwise)->rope(x, num_heads, seq_len, theta, inverse, doc_starts, scaling);
}

static void check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s,
                            const Tensor& doc_starts) {
  check_compute(q, "attention q");
  MOE_CHECK(s.num_heads > 0 && s.num_kv_heads > 0 && s.num_heads % s.num_kv_heads == 0,
            "attention: num_heads ", s.num_heads, " must be a multiple of num_kv_heads ", s.num_kv_heads);
  MOE_CHECK(s.kv_seq_len >= 0, "attention: kv_seq_len ", s.kv_seq_len, " must be >= 0 (0 = seq_len)");
  const bool cross = s.kv_len() != s.seq_len;
  MOE_CHECK(!cross || !s.causal, "attention: kv_seq_len ", s.kv_seq_len, " != seq_len ", s.seq_len,
            " (cross-attention) needs causal = false");
  MOE_CHECK(!cross || !doc_starts.defined(), "attention: kv_seq_len ", s.kv_seq_len, " != seq_len ", s.seq_len,
            " (cross-attention) cannot take document masking (doc_starts)");
  int64_t tokens = s.batch * s.seq_len;
  check_shape(q, {tokens, s.num_heads * s.head_dim}, "attention q");
  check_shape(k, {s.batch * s.kv_len(), s.num_kv_heads * s.head_dim}, "attention k");
  check_dtype(k, q.dtype(), "attention k");
  check_like(v, k, "attention v");
  MOE_CHECK(!doc_starts.defined() || s.causal, "attention: document masking (doc_starts) needs the causal mask");
  if (s.seq_len > 0) check_doc_starts(doc_starts, tokens, s.seq_len, q, "attention");
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const AttentionShape& shape, const Tensor& doc_starts) {
  check_attention(q, k, v, shape, doc_starts);
  check_like(out, q, "attention out");
  check_shape(lse, {shape.batch, shape.num_heads, shape.seq_len}, "attention lse");
  check_accum(lse, q, "attention lse");
  run_on(q, OpKind::attention_forward)->attention_forward(q, k, v, out, lse, shape, doc_starts);
}

int64_t attention_workspace_numel(const AttentionShape& shape, Device device) {
  return backend_for_device(device).attention_workspace_numel(shape);
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, const AttentionShape& shape,
                        const Tensor& workspace, const Tensor& doc_starts) {
  check_attention(q, k, v, shape, doc_starts);
  check_like(out, q, "attention out");
  check_like(dout, q, "attention dout");
  check_like(dq, q, "attention dq");
  check_like(dk, k, "attention dk");
  check_like(dv, v, "attention dv");
  if (workspace.defined()) {
    check_dtype(workspace, DType::f32, "attention workspace");
    check_same_device(q, workspace, "attention workspace");
    const int64_t needed = attention_workspace_numel(shape, q.device());
    MOE_CHECK(workspace.numel() >= needed, "attention workspace: ", workspace.numel(), " elements, the backward needs ",
              needed);
  }
  run_on(q, OpKind::attention_backward)
      ->attention_backward(q, k, v, out, lse, dout, dq, dk, dv, shape, workspace, doc_starts);
}

static void check_activation(Activation act, const Tensor& x, const Tensor& y) {
  check_compute(x, "activation x");
  MOE_CHECK(x.ndim() == 2, "activation x must be [T,f]");
  int64_t width = is_gated(act) ? x.size(1) / 2 : x.size(1);
  MOE_CHECK(!is_gated(act) || x.size(1) % 2 == 0, activation_name(act), " input width must be even");
  check_shape(y, {x.size(0), width}, "activation y");
  check_dtype(y, x.dtype(), "activation y");
}

void activation_forward(Activation act, const Tensor& x, Tensor& y) {
  check_activation(act, x, y);
  run_on(x, OpKind::activation)->activation_forward(act, x, y);
}

void activation_backward(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx) {
  check_activation(act, x, dy);
  check_like(dx, x, "activation dx");
  run_on(x, OpKind::activation)->activation_backward(act, x, dy, dx);
}

void activation_backward_weighted(Activation act, const Tensor& x, const Tensor& g, const Tensor& row_weights,
                                  Tensor& dx, Tensor& a_weighted, Tensor& drow_weights) {
  check_activation(act, x, g);
  check_like(dx, x, "weighted activation dx");
  check_like(a_weighted, g, "weighted activation a_weighted");
  check_shape(row_weights, {g.size(0)}, "weighted activation row_weights");
  check_accum(row_weights, x, "weighted activation row_weights");
  check_like(drow_weights, row_weights, "weighted activation drow_weights");
  run_on(x, OpKind::activation)->activation_backward_weighted(act, x, g, row_weights, dx, a_weighted, drow_weights);
}

void activation_backward_and_output(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx, Tensor& y) {
  check_activation(act, x, dy);
  check_like(dx, x, "activation dx");
  check_like(y, dy, "activation y");
  Tensor none;
  run_on(x, OpKind::activation)->activation_backward_weighted(act, x, dy, none, dx, y, none);
}

namespace {

// The forward's operands: logits [T,V], targets [T], loss and lse [T] in the accumulation type.
void check_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& loss, const Tensor& lse) {
  check_compute(logits, "cross-entropy logits");
  MOE_CHECK(logits.ndim() == 2, "cross-entropy logits must be [T,V]");
  check_index(targets, {logits.size(0)}, logits, "cross-entropy targets");
  check_shape(loss, {logits.size(0)}, "cross-entropy loss");
  check_accum(loss, logits, "cross-entropy loss");
  check_like(lse, loss, "cross-entropy lse");
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse,
                           VocabShard shard) {
  check_cross_entropy_forward(logits, targets, loss, lse);
  check_shard(shard, logits.size(1), "cross-entropy");
  run_on(logits, OpKind::loss)->cross_entropy_forward(logits, targets, loss, lse, shard);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, float scale,
                            Tensor& dlogits, VocabShard shard) {
  check_compute(logits, "cross-entropy logits");
  MOE_CHECK(logits.ndim() == 2, "cross-entropy logits must be [T,V]");
  check_index(targets, {logits.size(0)}, logits, "cross-entropy targets");
  check_shape(lse, {logits.size(0)}, "cross-entropy lse");
  check_like(dlogits, logits, "cross-entropy dlogits");  // may alias logits (elementwise in place)
  check_shard(shard, logits.size(1), "cross-entropy");
  run_on(logits, OpKind::loss)->cross_entropy_backward(logits, targets, lse, scale, dlogits, shard);
}

void cross_entropy_with_grad(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse, float scale,
                             Tensor& dlogits) {
  check_cross_entropy_forward(logits, targets, loss, lse);
  check_like(dlogits, logits, "cross-entropy dlogits");  // may alias logits
  if (run_on(logits, OpKind::loss)->cross_entropy_with_grad(logits, targets, loss, lse, scale, dlogits)) return;
  cross_entropy_forward(logits, targets, loss, lse);  // no single pass for these operands
  cross_entropy_backward(logits, targets, lse, scale, dlogits);
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  check_like(b, a, "add b");
  check_like(out, a, "add out");
  run_on(a, OpKind::elementwise)->add(a, b, out);
}

void accumulate(Tensor& dst, const Tensor& src, float alpha) {
  MOE_CHECK(dst.numel() == src.numel(), "accumulate: ", shape_str(dst.shape()), " += ", shape_str(src.shape()));
  MOE_CHECK(dst.dtype() == src.dtype() || dst.dtype() == accum_dtype(src.dtype()), "accumulate: ",
            dtype_name(dst.dtype()), " += ", dtype_name(src.dtype()));
  check_same_device(dst, src, "accumulate");
  run_on(dst, OpKind::elementwise)->accumulate(dst, src, alpha);
}

void scale(Tensor& x, float alpha) { run_on(x, OpKind::elementwise)->scale(x, alpha); }

void cast(const Tensor& src, Tensor& dst) {
  MOE_CHECK(src.numel() == dst.numel() && is_floating(src.dtype()) && is_floating(dst.dtype()), "cast: ",
            dtype_name(src.dtype()), shape_str(src.shape()), " -> ", dtype_name(dst.dtype()), shape_str(dst.shape()));
  check_same_device(src, dst, "cast");
  run_on(src, OpKind::elementwise)->cast(src, dst);
}

double sum(const Tensor& x) { return run_on(x, OpKind::elementwise)->sum(x); }
double sum_squares(const Tensor& x) { return run_on(x, OpKind::elementwise)->sum_squares(x); }

void column_sum(const Tensor& x, Tensor& out) {
  MOE_CHECK(x.ndim() == 2, "column_sum x must be 2-d");
  check_shape(out, {x.size(1)}, "column_sum out");
  check_dtype(out, x.dtype(), "column_sum out");
  run_on(x, OpKind::elementwise)->column_sum(x, out);
}

void row_entropy_accumulate(const Tensor& scores, Tensor& acc, double weight) {
  MOE_CHECK(scores.ndim() == 2, "row_entropy_accumulate scores must be 2-d, got ", shape_str(scores.shape()));
  check_shape(acc, {1}, "row_entropy_accumulate acc");
  check_dtype(acc, DType::f64, "row_entropy_accumulate acc");
  check_same_device(acc, scores, "row_entropy_accumulate");
  run_on(scores, OpKind::routing)->row_entropy_accumulate(scores, acc, weight);
}

void add_bias(Tensor& y, const Tensor& b) {
  check_compute(y, "add_bias y");
  MOE_CHECK(y.ndim() == 2, "add_bias: y", shape_str(y.shape()), " must be [T,C]");
  check_shape(b, {y.size(1)}, "add_bias b");
  check_dtype(b, y.dtype(), "add_bias b");
  check_same_device(y, b, "add_bias");
  run_on(y, OpKind::elementwise)->add_bias(y, b);
}

void bias_backward(const Tensor& dy, Tensor& db) {
  check_compute(dy, "bias_backward dy");
  MOE_CHECK(dy.ndim() == 2, "bias_backward: dy", shape_str(dy.shape()), " must be [T,C]");
  check_shape(db, {dy.size(1)}, "bias_backward db");
  check_dtype(db, accum_dtype(dy.dtype()), "bias_backward db");
  check_same_device(dy, db, "bias_backward");
  run_on(dy, OpKind::elementwise)->bias_backward(dy, db);
}

void gather_rows(const Tensor& src, const Tensor& index, Tensor& dst) {
  check_index(index, {index.numel()}, src, "gather index");
  MOE_CHECK(dst.size(0) == index.numel() && cols_of(dst) == cols_of(src), "gather: src", shape_str(src.shape()),
            " dst", shape_str(dst.shape()), " index ", index.numel());
  check_dtype(dst, src.dtype(), "gather dst");
  MOE_CHECK(!overlaps(dst, src), "gather: dst overlaps src (a gather does not work in place)");
  run_on(src, OpKind::permute)->gather_rows(src, index, dst);
}

void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& dst) {
  check_index(index, {index.numel()}, src, "scatter index");
  MOE_CHECK(src.size(0) == index.numel() && cols_of(dst) == cols_of(src), "scatter_add: src",
            shape_str(src.shape()), " dst", shape_str(dst.shape()), " index ", index.numel());
  check_dtype(dst, src.dtype(), "scatter_add dst");
  run_on(src, OpKind::permute)->scatter_add_rows(src, index, dst);
}

// Router tensors hold the accum dtype: f32 or f64 here, f32 enforced by the CUDA backend.
static void check_router_float(const Tensor& t, const char* name) {
  MOE_CHECK(t.defined(), name, " is undefined");
  MOE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, name, " must be f32 or f64, got ",
            dtype_name(t.dtype()));
}

static void check_topk_options(const TopKOptions& o, int64_t num_experts) {
  MOE_CHECK(o.k >= 1 && o.k <= num_experts, "top-k ", o.k, " must be between 1 and the expert count ", num_experts);
  MOE_CHECK(!o.softmax_after_topk || o.score == ScoreFunction::softmax,
            "router: softmax_after_topk needs softmax scores, not sigmoid");
  MOE_CHECK(o.num_groups >= 0 && o.top_groups >= 0, "router: num_groups ", o.num_groups, " and top_groups ",
            o.top_groups, " must be non-negative");
  if (o.num_groups == 0) {
    MOE_CHECK(o.top_groups == 0, "router: top_groups ", o.top_groups, " needs num_groups > 0");
    return;
  }
  MOE_CHECK(num_experts % o.num_groups == 0, "router: ", num_experts, " experts do not split into ", o.num_groups,
            " equal groups");
  MOE_CHECK(o.top_groups >= 1 && o.top_groups <= o.num_groups, "router: top_groups ", o.top_groups,
            " must be between 1 and num_groups ", o.num_groups);
  const int64_t allowed = o.top_groups * (num_experts / o.num_groups);
  MOE_CHECK(o.k <= allowed, "router: top-k ", o.k, " exceeds the ", allowed, " experts of the ", o.top_groups,
            " allowed groups");
}

namespace {

void check_router_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, const Tensor& scores,
                          const Tensor& ids, const Tensor& weights) {
  check_router_float(logits, "router logits");
  MOE_CHECK(logits.ndim() == 2, "router logits must be [T,E], got ", shape_str(logits.shape()));
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  check_topk_options(options, experts);
  if (bias.defined()) {
    check_shape(bias, {experts}, "router bias");
    check_dtype(bias, logits.dtype(), "router bias");
    check_same_device(bias, logits, "router bias");
  }
  check_like(scores, logits, "router scores");
  check_index(ids, {tokens, options.k}, logits, "router ids");
  check_shape(weights, {tokens, options.k}, "router weights");
  check_dtype(weights, logits.dtype(), "router weights");
  check_same_device(weights, logits, "router weights");
}

}  // namespace

void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, Tensor& scores,
                         Tensor& ids, Tensor& weights) {
  check_router_forward(logits, bias, options, scores, ids, weights);
  Tensor none;
  run_on(logits, OpKind::routing)->router_topk_forward(logits, bias, options, scores, ids, weights, none, none);
}

void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, Tensor& scores,
                         Tensor& ids, Tensor& weights, Tensor& score_sums, Tensor& counts) {
  check_router_forward(logits, bias, options, scores, ids, weights);
  const int64_t experts = logits.size(1);
  check_shape(score_sums, {experts}, "router score_sums");
  check_dtype(score_sums, logits.dtype(), "router score_sums");
  check_same_device(score_sums, logits, "router score_sums");
  check_shape(counts, {experts}, "router counts");
  check_dtype(counts, DType::i64, "router counts");
  check_same_device(counts, logits, "router counts");
  run_on(logits, OpKind::routing)->router_topk_forward(logits, bias, options, scores, ids, weights, score_sums, counts);
}

void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids, const Tensor& weights,
                          const Tensor& dweights, const Tensor& dscores, const TopKOptions& options, Tensor& dlogits) {
  router_topk_backward(logits, scores, ids, weights, dweights, dscores, Tensor(), options, dlogits);
}

void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids, const Tensor& weights,
                          const Tensor& dweights, const Tensor& dscores, const Tensor& dscore_row,
                          const TopKOptions& options, Tensor& dlogits) {
  check_router_float(logits, "router logits");
  MOE_CHECK(logits.ndim() == 2, "router logits must be [T,E], got ", shape_str(logits.shape()));
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  check_topk_options(options, experts);
  check_like(scores, logits, "router scores");
  check_index(ids, {tokens, options.k}, logits, "router ids");
  check_shape(weights, {tokens, options.k}, "router weights");
  check_dtype(weights, logits.dtype(), "router weights");
  check_same_device(weights, logits, "router weights");
  check_like(dweights, weights, "router dweights");
  if (dscores.defined()) check_like(dscores, logits, "router dscores");
  if (dscore_row.defined()) {
    check_shape(dscore_row, {experts}, "router dscore_row");
    check_dtype(dscore_row, logits.dtype(), "router dscore_row");
    check_same_device(dscore_row, logits, "router dscore_row");
  }
  check_like(dlogits, logits, "router dlogits");
  run_on(logits, OpKind::routing)
      ->router_topk_backward(logits, scores, ids, weights, dweights, dscores, dscore_row, options, dlogits);
}

void expert_choice_forward(const Tensor& scores, int64_t capacity, Tensor& ids, Tensor& weights) {
  check_router_float(scores, "expert choice scores");
  MOE_CHECK(scores.ndim() == 2, "expert choice scores must be [T,E], got ", shape_str(scores.shape()));
  MOE_CHECK(capacity >= 0, "expert choice capacity must be non-negative, got ", capacity);
  check_index(ids, scores.shape(), scores, "expert choice ids");
  check_like(weights, scores, "expert choice weights");
  run_on(scores, OpKind::routing)->expert_choice_forward(scores, capacity, ids, weights);
}

void expert_choice_backward(const Tensor& ids, const Tensor& dweights, Tensor& dscores) {
  check_router_float(dweights, "expert choice dweights");
  MOE_CHECK(dweights.ndim() == 2, "expert choice dweights must be [T,E], got ", shape_str(dweights.shape()));
  check_index(ids, dweights.shape(), dweights, "expert choice ids");
  check_like(dscores, dweights, "expert choice dscores");
  run_on(dweights, OpKind::routing)->expert_choice_backward(ids, dweights, dscores);
}

namespace {

void check_capacity(const Tensor& ids, const Tensor& weights, int64_t num_experts, int64_t capacity) {
  MOE_CHECK(ids.defined() && ids.ndim() == 2 && ids.dtype() == DType::i32, "capacity: expert ids must be i32[T,k]");
  check_router_float(weights, "capacity weights");
  check_shape(weights, ids.shape(), "capacity weights");
  check_same_device(weights, ids, "capacity weights");
  MOE_CHECK(num_experts >= 1, "capacity: expert count must be positive, got ", num_experts);
  MOE_CHECK(capacity >= 0, "capacity must be non-negative, got ", capacity);
}

}  // namespace

int64_t apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity, DropOrder order) {
  check_capacity(ids, weights, num_experts, capacity);
  return run_on(ids, OpKind::routing)->apply_capacity(ids, weights, num_experts, capacity, order);
}

void apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity, DropOrder order,
                    Tensor& dropped) {
  check_capacity(ids, weights, num_experts, capacity);
  check_shape(dropped, {1}, "capacity dropped count");
  check_dtype(dropped, DType::i64, "capacity dropped count");
  check_same_device(dropped, ids, "capacity dropped count");
  run_on(ids, OpKind::routing)->apply_capacity_on_device(ids, weights, num_experts, capacity, order, dropped);
}

void noisy_logits_forward(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, Tensor& h) {
  check_router_float(clean, "noisy clean logits");
  MOE_CHECK(clean.ndim() == 2, "noisy clean logits must be [T,E], got ", shape_str(clean.shape()));
  check_like(raw_noise, clean, "noisy raw_noise");
  check_like(normal, clean, "noisy normal");
  check_like(h, clean, "noisy h");
  run_on(clean, OpKind::routing)->noisy_logits_forward(clean, raw_noise, normal, h);
}

void noisy_logits_backward(const Tensor& raw_noise, const Tensor& normal, const Tensor& dh, Tensor& dclean,
                           Tensor& draw_noise) {
  check_router_float(raw_noise, "noisy raw_noise");
  MOE_CHECK(raw_noise.ndim() == 2, "noisy raw_noise must be [T,E], got ", shape_str(raw_noise.shape()));
  check_like(normal, raw_noise, "noisy normal");
  check_like(dh, raw_noise, "noisy dh");
  check_like(dclean, raw_noise, "noisy dclean");
  check_like(draw_noise, raw_noise, "noisy draw_noise");
  run_on(raw_noise, OpKind::routing)->noisy_logits_backward(raw_noise, normal, dh, dclean, draw_noise);
}

static void check_row_gate(const Tensor& x, const Tensor& gate) {
  check_compute(x, "row gate x");
  MOE_CHECK(x.ndim() == 2, "row gate x must be [T,d], got ", shape_str(x.shape()));
  check_shape(gate, {x.size(0), 1}, "row gate gate");
  check_dtype(gate, x.dtype(), "row gate gate");
  check_same_device(gate, x, "row gate gate");
}

void row_gate_forward(const Tensor& x, const Tensor& gate, Tensor& y) {
  check_row_gate(x, gate);
  check_like(y, x, "row gate y");
  run_on(x, OpKind::elementwise)->row_gate_forward(x, gate, y);
}

void row_gate_backward(const Tensor& x, const Tensor& gate, const Tensor& dy, Tensor& dx, Tensor& dgate) {
  check_row_gate(x, gate);
  check_like(dy, x, "row gate dy");
  check_like(dx, x, "row gate dx");
  check_like(dgate, gate, "row gate dgate");
  run_on(x, OpKind::elementwise)->row_gate_backward(x, gate, dy, dx, dgate);
}

std::vector<int64_t> moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens,
                                        Tensor& slot_pos) {
  MOE_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "expert ids must be i32[T,k]");
  check_index(sorted_tokens, {ids.numel()}, ids, "sorted_tokens");
  check_index(slot_pos, {ids.numel()}, ids, "slot_pos");
  return run_on(ids, OpKind::permute)->moe_sort_by_expert(ids, num_experts, sorted_tokens, slot_pos);
}

namespace {

void check_sort_offsets(const Tensor& ids, int64_t num_experts, const Tensor& sorted_tokens, const Tensor& slot_pos,
                        const Tensor& offsets) {
  MOE_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "expert ids must be i32[T,k]");
  MOE_CHECK(num_experts >= 1, "moe_sort_by_expert: expert count must be positive, got ", num_experts);
  check_index(sorted_tokens, {ids.numel()}, ids, "sorted_tokens");
  check_index(slot_pos, {ids.numel()}, ids, "slot_pos");
  check_index(offsets, {num_experts + 1}, ids, "expert offsets");
}

}  // namespace

void moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens, Tensor& slot_pos,
                        Tensor& offsets) {
  check_sort_offsets(ids, num_experts, sorted_tokens, slot_pos, offsets);
  run_on(ids, OpKind::permute)->moe_sort_by_expert_offsets(ids, num_experts, sorted_tokens, slot_pos, offsets);
}

void moe_permute_rows(const Tensor& ids, const Tensor& x, int64_t num_experts, Tensor& sorted_tokens,
                      Tensor& slot_pos, Tensor& offsets, Tensor& x_sorted) {
  check_sort_offsets(ids, num_experts, sorted_tokens, slot_pos, offsets);
  MOE_CHECK(x.ndim() == 2 && x.size(0) == ids.size(0), "moe_permute_rows: x", shape_str(x.shape()),
            " must be [T,d] with T = ", ids.size(0), " (the ids' tokens)");
  MOE_CHECK(x_sorted.ndim() == 2 && x_sorted.size(1) == x.size(1) && x_sorted.size(0) <= ids.numel(),
            "moe_permute_rows: x_sorted", shape_str(x_sorted.shape()), " must be [N,", x.size(1), "] with N <= ",
            ids.numel(), " slots");
  check_dtype(x_sorted, x.dtype(), "moe_permute_rows x_sorted");
  check_same_device(x, ids, "moe_permute_rows x");
  check_same_device(x_sorted, ids, "moe_permute_rows x_sorted");
  run_on(x, OpKind::permute)->moe_permute_rows(ids, x, num_experts, sorted_tokens, slot_pos, offsets, x_sorted);
}

std::vector<int64_t> counts_from_offsets(const Tensor& offsets, const char* who) {
  MOE_CHECK(offsets.ndim() == 1 && offsets.dtype() == DType::i32 && offsets.numel() >= 1, who,
            ": offsets must be i32[E+1]");
  const std::vector<int32_t> ends = offsets.to_vector<int32_t>();
  MOE_CHECK(ends.front() == 0, who, ": offsets[0] is ", ends.front(), ", not 0");
  std::vector<int64_t> counts;
  for (size_t e = 1; e < ends.size(); ++e) {
    MOE_CHECK(ends[e] >= ends[e - 1], who, ": offsets decrease at expert ", e - 1, " (", ends[e - 1], " then ",
              ends[e], ")");
    counts.push_back(ends[e] - ends[e - 1]);
  }
  return counts;
}

void moe_unpermute_sum(const Tensor& x_sorted, const Tensor& slot_pos, Tensor& out, const Tensor& add) {
  check_compute(x_sorted, "unpermute x_sorted");
  MOE_CHECK(x_sorted.ndim() == 2 && out.ndim() == 2 && out.size(0) > 0 && slot_pos.numel() % out.size(0) == 0,
            "unpermute: x_sorted", shape_str(x_sorted.shape()), " slot_pos", shape_str(slot_pos.shape()), " out",
            shape_str(out.shape()));
  check_index(slot_pos, {slot_pos.numel()}, x_sorted, "unpermute slot_pos");
  check_shape(out, {out.size(0), x_sorted.size(1)}, "unpermute out");
  check_dtype(out, x_sorted.dtype(), "unpermute out");
  if (add.defined()) check_like(add, out, "unpermute add");
  run_on(x_sorted, OpKind::permute)->moe_combine_forward(x_sorted, slot_pos, Tensor(), out, add, Tensor());
}

void moe_combine_forward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights, Tensor& out,
                         const Tensor& add_a, const Tensor& add_b) {
  check_compute(y_sorted, "combine y_sorted");
  // y_sorted may hold fewer rows than slots (dropped slots take none); the backend range-checks
  // the rows slot_pos names where it can without a device sync.
  MOE_CHECK(weights.ndim() == 2 && y_sorted.ndim() == 2, "combine: y_sorted", shape_str(y_sorted.shape()),
            " weights", shape_str(weights.shape()));
  check_accum(weights, y_sorted, "combine weights");
  check_index(slot_pos, {weights.numel()}, y_sorted, "combine slot_pos");
  check_shape(out, {weights.size(0), y_sorted.size(1)}, "combine out");
  check_dtype(out, y_sorted.dtype(), "combine out");
  if (add_a.defined()) check_like(add_a, out, "combine add_a");
  if (add_b.defined()) check_like(add_b, out, "combine add_b");
  run_on(y_sorted, OpKind::permute)->moe_combine_forward(y_sorted, slot_pos, weights, out, add_a, add_b);
}

void moe_combine_backward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                          Tensor& dy_sorted, Tensor& dweights) {
  check_compute(y_sorted, "combine y_sorted");
  MOE_CHECK(weights.ndim() == 2 && y_sorted.ndim() == 2, "combine: y_sorted", shape_str(y_sorted.shape()),
            " weights", shape_str(weights.shape()));
  check_accum(weights, y_sorted, "combine weights");
  check_index(slot_pos, {weights.numel()}, y_sorted, "combine slot_pos");
  check_shape(dout, {weights.size(0), y_sorted.size(1)}, "combine dout");
  check_dtype(dout, y_sorted.dtype(), "combine dout");
  check_like(dy_sorted, y_sorted, "combine dy_sorted");
  check_like(dweights, weights, "combine dweights");
  run_on(y_sorted, OpKind::permute)->moe_combine_backward(y_sorted, slot_pos, weights, dout, dy_sorted, dweights);
}

void moe_combine_backward_unweighted(const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                                     Tensor& dy_sorted, Tensor& row_weights) {
  check_compute(dout, "combine dout");
  MOE_CHECK(weights.ndim() == 2 && dout.ndim() == 2 && dy_sorted.ndim() == 2, "combine: weights",
            shape_str(weights.shape()), " dout", shape_str(dout.shape()), " dy_sorted", shape_str(dy_sorted.shape()));
  check_accum(weights, dout, "combine weights");
  check_index(slot_pos, {weights.numel()}, dout, "combine slot_pos");
  check_shape(dout, {weights.size(0), dy_sorted.size(1)}, "combine dout");
  check_dtype(dy_sorted, dout.dtype(), "combine dy_sorted");
  check_shape(row_weights, {dy_sorted.size(0)}, "combine row_weights");
  check_dtype(row_weights, weights.dtype(), "combine row_weights");
  run_on(dout, OpKind::permute)->moe_combine_backward_unweighted(slot_pos, weights, dout, dy_sorted, row_weights);
}

void moe_scatter_rows(const Tensor& x, const Tensor& slot_pos, Tensor& x_sorted) {
  MOE_CHECK(x.ndim() == 2 && x_sorted.ndim() == 2 && x_sorted.size(1) == x.size(1),
            "moe_scatter_rows: x and x_sorted must be [T,d] and [N,d], got x", shape_str(x.shape()), " x_sorted",
            shape_str(x_sorted.shape()));
  MOE_CHECK(x.size(0) > 0 ? slot_pos.numel() % x.size(0) == 0 && slot_pos.numel() > 0 : slot_pos.numel() == 0,
            "moe_scatter_rows: ", slot_pos.numel(), " slots for ", x.size(0), " tokens");
  check_index(slot_pos, {slot_pos.numel()}, x, "moe_scatter_rows slot_pos");
  check_dtype(x_sorted, x.dtype(), "moe_scatter_rows x_sorted");
  check_same_device(x_sorted, x, "moe_scatter_rows x_sorted");
  MOE_CHECK(!overlaps(x_sorted, x), "moe_scatter_rows: x_sorted overlaps x");
  run_on(x, OpKind::permute)->moe_scatter_rows(x, slot_pos, x_sorted);
}

void moe_gather_slots(const Tensor& row_values, const Tensor& slot_pos, Tensor& slot_values) {
  MOE_CHECK(row_values.ndim() == 1, "gather slots: row_values must be [N], got ", shape_str(row_values.shape()));
  MOE_CHECK(row_values.dtype() == DType::f32 || row_values.dtype() == DType::f64,
            "gather slots: row_values must be f32 or f64, got ", dtype_name(row_values.dtype()));
  check_index(slot_pos, {slot_values.numel()}, row_values, "gather slots slot_pos");
  check_dtype(slot_values, row_values.dtype(), "gather slots slot_values");
  run_on(row_values, OpKind::permute)->moe_gather_slots(row_values, slot_pos, slot_values);
}

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p) {
  MOE_CHECK(param.dtype() == DType::f32 || param.dtype() == DType::f64, "adamw params must be f32 or f64");
  check_like(grad, param, "adamw grad");
  check_like(m, grad, "adamw m");
  check_like(v, grad, "adamw v");
  run_on(param, OpKind::optimizer)->adamw_step(param, grad, m, v, p);
}

void adamw_fused(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const Tensor& runs,
                 const Tensor& grad_scale, const AdamWParams& p, Tensor& params) {
  MOE_CHECK(master.dtype() == DType::f32 || master.dtype() == DType::f64, "adamw_fused master must be f32 or f64, got ",
            dtype_name(master.dtype()));
  MOE_CHECK(master.ndim() == 1, "adamw_fused master must be flat, got ", shape_str(master.shape()));
  check_like(grad, master, "adamw_fused grad");
  check_like(m, master, "adamw_fused m");
  check_like(v, master, "adamw_fused v");
  MOE_CHECK(runs.ndim() == 2 && runs.size(1) == 3, "adamw_fused runs must be i64[R,3], got ", shape_str(runs.shape()));
  check_dtype(runs, DType::i64, "adamw_fused runs");
  check_same_device(runs, master, "adamw_fused runs");
  if (grad_scale.defined()) {
    check_shape(grad_scale, {1}, "adamw_fused grad_scale");
    check_dtype(grad_scale, DType::f32, "adamw_fused grad_scale");
    check_same_device(grad_scale, master, "adamw_fused grad_scale");
  }
  if (params.defined()) {
    check_shape(params, master.shape(), "adamw_fused params");
    MOE_CHECK(is_floating(params.dtype()), "adamw_fused params must be floating, got ", dtype_name(params.dtype()));
    check_same_device(params, master, "adamw_fused params");
  }
  run_on(master, OpKind::optimizer)->adamw_fused(master, grad, m, v, runs, grad_scale, p, params);
}

namespace {

void check_sum_acc(const Tensor& x, const Tensor& acc, const char* op) {
  check_shape(acc, {1}, op);
  check_dtype(acc, DType::f64, op);
  check_same_device(acc, x, op);
}

}  // namespace

void sum_squares_accumulate(const Tensor& x, Tensor& acc, double weight) {
  check_sum_acc(x, acc, "sum_squares_accumulate acc");
  run_on(x, OpKind::optimizer)->sum_accumulate(x, acc, true, weight);
}

void sum_accumulate(const Tensor& x, Tensor& acc, double weight) {
  check_sum_acc(x, acc, "sum_accumulate acc");
  run_on(x, OpKind::loss)->sum_accumulate(x, acc, false, weight);
}

void clip_scale(const Tensor& sum_sq, double max_norm, Tensor& scale) {
  MOE_CHECK(sum_sq.ndim() == 1, "clip_scale sum_sq must be f64[k], got ", shape_str(sum_sq.shape()));
  check_dtype(sum_sq, DType::f64, "clip_scale sum_sq");
  check_shape(scale, {1}, "clip_scale scale");
  check_dtype(scale, DType::f32, "clip_scale scale");
  check_same_device(scale, sum_sq, "clip_scale");
  run_on(sum_sq, OpKind::optimizer)->clip_scale(sum_sq, max_norm, scale);
}

void record_skipped_step(const Tensor& scale, Tensor& state, int64_t step) {
  check_shape(scale, {1}, "record_skipped_step scale");
  check_dtype(scale, DType::f32, "record_skipped_step scale");
  check_shape(state, {5}, "record_skipped_step state");
  check_dtype(state, DType::f64, "record_skipped_step state");
  check_same_device(state, scale, "record_skipped_step");
  MOE_CHECK(step >= 1, "record_skipped_step: step must be 1-based, got ", step);
  run_on(scale, OpKind::optimizer)->record_skipped_step(scale, state, step);
}

}  // namespace moe::ops

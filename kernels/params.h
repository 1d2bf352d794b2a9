// The POD parameter types of the kernels, defined once: the ops layer, the CPU reference kernels
// and the CUDA kernels all take these. Plain C++ with <cstdint> only, so g++ and nvcc both compile it.
#pragma once

#include <cstdint>

namespace moe::kernels {

// Storage of a floating buffer on the GPU: bf16 for compute tensors, f32 for accum tensors.
enum class FloatType : int { f32 = 0, bf16 = 1 };

inline const char* float_type_name(FloatType t) { return t == FloatType::f32 ? "f32" : "bf16"; }

// FFN activations. relu/gelu (tanh approximation): x[T,f] -> y[T,f]. geglu/swiglu: x[T,2f] holds
// [gate | up] -> y[T,f] = act(gate) * up (gelu for geglu, silu for swiglu).
enum class Activation : int { relu = 0, gelu = 1, geglu = 2, swiglu = 3 };

// Whether the activation's input row is [gate | up] (twice the output width). constexpr so that
// device code and `if constexpr` can use it.
constexpr bool is_gated(Activation act) { return act == Activation::geglu || act == Activation::swiglu; }

// Grouped-query attention over batch sequences of seq_len queries: query head h reads kv head
// h / (num_heads / num_kv_heads); head_dim is the width of one head. Cross-attention: each
// sequence's queries read kv_seq_len keys/values of their own batch entry (non-causal only).
struct AttentionShape {
  int64_t batch = 0, seq_len = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  bool causal = true;  // query i sees keys 0..i; false: every key of its sequence
  int64_t kv_seq_len = 0;  // keys/values per sequence; 0 = seq_len
  // Keys/values per sequence (seq_len for self-attention).
  constexpr int64_t kv_len() const { return kv_seq_len ? kv_seq_len : seq_len; }
};

// The router's score function over the expert logits.
enum class ScoreFunction : int { softmax = 0, sigmoid = 1 };

// Top-k routing options (the sizes, tokens and experts, are separate kernel arguments).
struct TopKOptions {
  int64_t k = 1;
  ScoreFunction score = ScoreFunction::softmax;
  // Weights = selected scores divided by their sum (sigmoid routers always renormalise, as
  // DeepSeek-V3 does).
  bool renormalize = false;
  // Mixtral order: top-k on the logits, then the weights are a softmax over the k selected
  // logits (softmax scores only; `scores` still holds the softmax over all experts).
  bool softmax_after_topk = false;
  // Group-limited routing: experts form num_groups contiguous groups; a token may only select
  // experts of its top_groups groups, ranked by the group's highest (biased) score. 0 = off.
  int64_t num_groups = 0, top_groups = 0;
};

// Whether the weights are the selected scores divided by their sum (sigmoid routers always are).
constexpr bool renormalizes(const TopKOptions& o) {
  return !o.softmax_after_topk && (o.renormalize || o.score == ScoreFunction::sigmoid);
}

// Which slots an expert over capacity keeps: the highest weights first (ties: lower token, then
// lower slot), or by position, slot-major then token (every first choice before any second, as
// GShard).
enum class DropOrder : int { by_probability = 0, by_position = 1 };

// A grouped GEMM over rows sorted by expert: rows [offsets[e], offsets[e+1]) of x[rows, k]
// belong to expert e of num_experts (offsets i32[num_experts+1], offsets[num_experts] = rows).
// Forward: y[rows, n] = x @ w[e] with w[E, k, n] (or w[E, n, k] read transposed). Weight
// gradient: dw[E, k, n] += x_e^T @ dy_e with dy[rows, n] (or =, for a gradient's first write).
struct GroupedGemmShape {
  int64_t num_experts = 0, rows = 0, k = 0, n = 0;
};

// AdamW hyperparameters of one step (decoupled weight decay).
struct AdamWParams {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t step = 1;  // 1-based, for bias correction
};

// What the fused AdamW does with one run of a flat range: update without or with weight decay,
// or only copy the master value to the compute copy (buffers, gaps between parameters).
enum class AdamWRunKind : int64_t { no_decay = 0, decay = 1, copy = 2 };

// One run of the fused AdamW's table: elements [begin, end) of the range, one kind. A table
// covers [0, n) in order without gaps (the ops layer holds it as an i64[R,3] tensor).
struct AdamWRun {
  int64_t begin = 0, end = 0;
  AdamWRunKind kind = AdamWRunKind::no_decay;
};
static_assert(sizeof(AdamWRun) == 3 * sizeof(int64_t), "AdamWRun is read from an i64[R,3] tensor");

}  // namespace moe::kernels

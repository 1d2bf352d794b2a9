// The ops layer: Tensor-level operations with shape contracts, dispatched to the CPU
// reference kernels (f32/f64) or the CUDA kernels (bf16 storage, fp32 accumulation).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/params.h"
#include "kernels/rope_freq.h"
#include "src/tensor/tensor.h"

namespace moe::ops {

// The kernels' parameter types are the ops layer's (one definition, kernels/params.h).
using kernels::Activation;
using kernels::AdamWParams;
using kernels::AdamWRun;
using kernels::AdamWRunKind;
using kernels::AttentionShape;
using kernels::DropOrder;
using kernels::is_gated;
using kernels::RopeScaling;
using kernels::RopeScalingKind;
using kernels::ScoreFunction;
using kernels::TopKOptions;

// Dtype policy. "compute" tensors (weights, activations) are f32/f64 on CPU and bf16 on CUDA.
// "accum" tensors (parameter gradients, norm statistics, router logits/probs, per-token
// losses) are the compute dtype on CPU and f32 where the compute dtype is bf16.
inline DType accum_dtype(DType compute) { return compute == DType::bf16 ? DType::f32 : compute; }

// c[M,N] = alpha * op(a) @ op(b) + beta * c, row-major; op(a)[M,K], op(b)[K,N].
// a, b same dtype; c the same dtype or accum_dtype(a) (bf16 inputs into an f32 gradient).
void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
            float beta = 0.0f);

// Grouped matmul over rows sorted by expert: offsets i32[E+1] on x's device (rows
// [offsets[e], offsets[e+1]) belong to expert e, offsets[E] = N), x[N,K], w[E,K,M] (or [E,M,K]
// when trans_w) -> y[N,M], y rows of e = x rows of e @ op(w[e]). y is x's dtype. The offsets stay
// on the device (no host sync); on CUDA, K and M must be multiples of 8.
void grouped_matmul(const Tensor& x, const Tensor& offsets, const Tensor& w, bool trans_w, Tensor& y);
// Its weight gradient: x[N,K], dy[N,M], offsets i32[E+1] -> dw[E,K,M] (accum dtype) +=
// x rows of e ^T @ dy rows of e; an expert with no rows leaves dw[e] unchanged. With accumulate
// false dw is overwritten (= instead of +=, zeros for an expert with no rows) and never read.
void grouped_matmul_weight_grad(const Tensor& x, const Tensor& offsets, const Tensor& dy, Tensor& dw,
                                bool accumulate = true);
// The CUDA kernel of both: "auto" (default: the Hopper wgmma kernel where the GPU runs it, else
// mma_sync), "mma_sync", "wgmma" or "wgmma_narrow" (wgmma with 128-wide tiles only, a block per
// tile); benchmarks and tests name one to compare them. An unknown name, or a wgmma kernel on a GPU
// without it, is an error.
void set_grouped_matmul_kernel(const std::string& name);
// The kernel they run on `device`: "cpu", "mma_sync", "wgmma" or "wgmma_narrow".
std::string grouped_matmul_kernel(Device device);

// One shard of a vocabulary split over tensor-parallel ranks: the local table rows / logit
// columns are ids [start, start + local size) of `full` ids. full == 0: not sharded (start 0).
struct VocabShard {
  int64_t start = 0;
  int64_t full = 0;
};

// ids i32[T], table[V,d] -> out[T,d]. Sharded (table[V/tp,d]): out[t] = table[ids[t] - start]
// where the id is local, a zero row where another shard holds it; ids outside [0, full) are an
// error (CPU; NaN rows on CUDA).
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, VocabShard shard = {});
// dtable[V,d] (accum) += rows of dout[T,d] at ids (sharded: at the local ids only)
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, VocabShard shard = {});

// Document starts (document masking and positions): doc_starts i32[T] on the tensors' device
// holds, for token t of a sequence of seq_len, the position (0 .. t % seq_len) where t's
// document begins: 0 at a sequence's first token, then unchanged or t % seq_len itself (a new
// document). Undefined = one document per sequence. The CPU checks this structure (an error
// naming the token); on the GPU it is trusted (the model builds it, model/batch.h).

// Learned positions: x[T,d] += pos[p(t)] where pos[S_max,d], seq_len <= S_max, p(t) = t % seq_len
// (less doc_starts[t] when defined: the position inside the document).
void position_add_forward(Tensor& x, const Tensor& pos, int64_t seq_len, const Tensor& doc_starts = Tensor());
// dpos[S_max,d] (accum) += the rows of dx[T,d] at each position p(t). With doc_starts the CUDA
// sums are atomic (their order, so the last bits, vary from run to run).
void position_add_backward(const Tensor& dx, Tensor& dpos, int64_t seq_len, const Tensor& doc_starts = Tensor());

// RMSNorm: x[T,d], w[d] -> y[T,d], rstd[T] (accum)
void rmsnorm_forward(const Tensor& x, const Tensor& w, Tensor& y, Tensor& rstd, float eps);
// Residual add fused with RMSNorm, one pass: x[T,d], delta[T,d], w[d] -> h[T,d] = x + delta (the
// residual stream, rounded to the compute dtype; h may be x itself), y[T,d] = rmsnorm(h), rstd[T]
void add_rmsnorm_forward(const Tensor& x, const Tensor& delta, const Tensor& w, Tensor& h, Tensor& y, Tensor& rstd,
                         float eps);
// dx[T,d] written (+ dresidual[T,d] when defined: the residual path's gradient, fused; it may be
// dx itself; dx may not overlap x or dy), dw[d] (accum) accumulated
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, Tensor& dx,
                      Tensor& dw, const Tensor& dresidual = Tensor());
// LayerNorm: x[T,d], w[d], b[d] -> y[T,d], mean[T], rstd[T] (accum)
void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y, Tensor& mean, Tensor& rstd,
                       float eps);
// Residual add fused with LayerNorm: x, delta[T,d], w, b[d] -> h = x + delta, y = layernorm(h), mean, rstd[T]
void add_layernorm_forward(const Tensor& x, const Tensor& delta, const Tensor& w, const Tensor& b, Tensor& h,
                           Tensor& y, Tensor& mean, Tensor& rstd, float eps);
// dx[T,d] written (+ dresidual[T,d] when defined, may be dx itself; dx may not overlap x or dy),
// dw[d], db[d] (accum) accumulated
void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                        Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dresidual = Tensor());

// Rotary embedding in place on x[T, H*hd], position t % seq_len (less doc_starts[t] when defined),
// pairs (i, i + hd/2) rotated by angle pos * theta^(-2i/hd) (the Llama/GPT-NeoX layout), the
// frequencies scaled as `scaling` says (kernels/rope_freq.h: linear, llama3).
// inverse=true rotates back, which is the backward of the forward rotation.
void rope(Tensor& x, int64_t num_heads, int64_t seq_len, float theta, bool inverse,
          const Tensor& doc_starts = Tensor(), const RopeScaling& scaling = {});

// Scaled-dot-product attention (scale 1/sqrt(hd)), causal or not, with grouped-query heads
// (query head h reads kv head h / (Hq / Hkv)). q[B*S, Hq*hd], k,v[B*Skv, Hkv*hd] -> out[B*S, Hq*hd],
// lse[B, Hq, S] (accum), the log-sum-exp of each softmax row, kept for backward. Skv =
// shape.kv_len(): S for self-attention; cross-attention (kv_seq_len != S: the queries of batch
// entry b read its Skv keys) needs causal = false and no doc_starts. doc_starts
// i32[B*S] (causal only; undefined = off): query i sees only keys doc_starts[i] .. i, its document.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const AttentionShape& shape, const Tensor& doc_starts = Tensor());
// f32 elements of scratch attention_backward uses on `device` (0 on the CPU; on CUDA the fp32 dQ
// accumulator [B*S, Hq*hd] of the flash kernels and the row statistics delta [B, Hq, S]).
int64_t attention_workspace_numel(const AttentionShape& shape, Device device);
// dq, dk, dv written (same shapes as q, k, v; dk, dv [B*Skv, Hkv*hd]). workspace: f32 on q's device with at least
// attention_workspace_numel elements, or undefined (then allocated for this call from the pool).
// doc_starts: the forward's.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, const AttentionShape& shape,
                        const Tensor& workspace = Tensor(), const Tensor& doc_starts = Tensor());

// Activations. relu/gelu(tanh approximation): x[T,f] -> y[T,f]. geglu/swiglu: x[T,2f] holds
// [gate | up] -> y[T,f] = act(gate) * up.
const char* activation_name(Activation act);
Activation activation_from_name(const std::string& name);  // throws naming the value
void activation_forward(Activation act, const Tensor& x, Tensor& y);
// dx (shape of x) written
void activation_backward(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx);
// The backward of y[r] = w[r] * act(x[r]) with the row weights folded in (the experts' backward that
// applies the combine's weights): x as above [T, f or 2f], g[T,f] the gradient of the unweighted
// act(x), row_weights[T] (accum) -> dx[T, f or 2f] = d(w act(x))/dx applied to g (written),
// a_weighted[T,f] = w * act(x) (written; may be g itself), drow_weights[T] (accum, written) =
// <g[r], act(x[r])>.
void activation_backward_weighted(Activation act, const Tensor& x, const Tensor& g, const Tensor& row_weights,
                                  Tensor& dx, Tensor& a_weighted, Tensor& drow_weights);
// activation_backward that also makes the forward's output again: dx as activation_backward(act,
// x, dy, dx), y[T,f] = act(x) (written; may be dy itself), for a backward whose forward did not
// keep y (one pass).
void activation_backward_and_output(Activation act, const Tensor& x, const Tensor& dy, Tensor& dx, Tensor& y);

// Softmax cross-entropy: logits[T,V], targets i32[T] (negative = ignored) -> loss[T] (accum;
// 0 where ignored), lse[T] (accum). Sharded (logits[T,V/tp], the shard's columns): lse is the
// log-sum-exp of the local columns; loss = lse - logits[t, target - start] where the target is
// local, lse where another shard holds it (so lse - loss recovers a local target logit);
// targets >= full are an error (CPU; NaN loss on CUDA).
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse,
                           VocabShard shard = {});
// dlogits[T,V] = scale * (exp(logits - lse) - onehot(target)), zero rows where ignored
// (written). Sharded: the onehot only where the target is local; lse must then be the
// log-sum-exp over the whole vocabulary. dlogits may be logits itself (in place: the model's head
// writes the gradient over its logits, no second [T,V] buffer).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, float scale,
                            Tensor& dlogits, VocabShard shard = {});
// Both at once, unsharded (the model's head, whose gradient scale is known before its forward):
// loss, lse as cross_entropy_forward writes them and dlogits as cross_entropy_backward does (may be
// logits itself). On CUDA each row is read from memory once where it fits the shared memory.
void cross_entropy_with_grad(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor& lse, float scale,
                             Tensor& dlogits);

// Elementwise. out = a + b (same shape and dtype).
void add(const Tensor& a, const Tensor& b, Tensor& out);
// dst += alpha * src; dst has src's dtype or accum_dtype(src), same numel.
void accumulate(Tensor& dst, const Tensor& src, float alpha = 1.0f);
// x *= alpha
void scale(Tensor& x, float alpha);
// dst = src converted between float dtypes (same numel, same device)
void cast(const Tensor& src, Tensor& dst);
// Host-synchronising reductions in double.
double sum(const Tensor& x);
double sum_squares(const Tensor& x);
// x[R,C] (accum) -> out[C] (accum): column sums
void column_sum(const Tensor& x, Tensor& out);
// scores[T,E] (accum, non-negative) -> acc f64[1] += weight * sum over rows of the entropy of the
// row normalised to sum 1, on the scores' device without a host wait (the router-entropy metric).
void row_entropy_accumulate(const Tensor& scores, Tensor& acc, double weight);

// Linear biases: y[T,C] += b[C] (same dtype: compute), in place.
void add_bias(Tensor& y, const Tensor& b);
// Their gradient: db[C] (accum_dtype(dy)) += column sums of dy[T,C] (accumulated).
void bias_backward(const Tensor& dy, Tensor& db);

// Rows by index: dst[i] = src[index[i]]; index i32[N], src[R,d], dst[N,d]; index -1 = a row of zeros.
void gather_rows(const Tensor& src, const Tensor& index, Tensor& dst);
// dst[index[i]] += src[i]; src[N,d], dst[R,d] (indices may repeat).
void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& dst);

// ---- Routing (issue 3) ----
// logits[T,E] (accum), bias[E] (accum, or undefined = none) -> scores[T,E] = softmax or
// sigmoid of the logits, ids i32[T,k] = the k largest of scores + bias (ties to the lower
// index, descending), weights[T,k] from the unbiased scores. The bias only selects
// (aux-loss-free balancing).
void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, Tensor& scores,
                         Tensor& ids, Tensor& weights);
// The same pass also making the Switch statistics (written): score_sums accum[E] = the scores
// summed over the T tokens, counts i64[E] = the slots routed to each expert.
void router_topk_forward(const Tensor& logits, const Tensor& bias, const TopKOptions& options, Tensor& scores,
                         Tensor& ids, Tensor& weights, Tensor& score_sums, Tensor& counts);
// dlogits[T,E] (written) from dweights[T,k] and dscores[T,E] (gradient of the balancing
// losses on the scores; undefined = none).
void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids, const Tensor& weights,
                          const Tensor& dweights, const Tensor& dscores, const TopKOptions& options, Tensor& dlogits);
// The same with dscore_row accum[E] (undefined = none) added to every token's score gradient: the
// per-expert balancing terms' gradient, never spread into a [T,E] tensor.
void router_topk_backward(const Tensor& logits, const Tensor& scores, const Tensor& ids, const Tensor& weights,
                          const Tensor& dweights, const Tensor& dscores, const Tensor& dscore_row,
                          const TopKOptions& options, Tensor& dlogits);

// Expert choice (Zhou et al. 2022): scores[T,E] (accum) -> each expert e takes its `capacity`
// highest-scoring tokens (ties to the lower token; every token when capacity >= T). ids
// i32[T,E]: ids[t,e] = e when expert e took token t, else -1; weights[T,E] = scores where
// taken, else 0.
void expert_choice_forward(const Tensor& scores, int64_t capacity, Tensor& ids, Tensor& weights);
// dscores[T,E] += dweights where taken (accumulated).
void expert_choice_backward(const Tensor& ids, const Tensor& dweights, Tensor& dscores);

// Capacity: each expert keeps at most `capacity` of its slots; the others get id -1 and weight
// 0 (in place). Priority by_probability: highest weight first (ties: lower token, then lower
// slot); else by position: slot-major then token order (all first choices before any second
// choice, as GShard). Slots already -1 stay so and do not count. Returns the number of slots
// dropped by this call (host, synchronising).
int64_t apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity, DropOrder order);
// The same with no host wait: dropped i64[1] on ids' device = the slots dropped. The CPU checks
// ids (error naming the slot); on the GPU an id outside [-1, E) is left alone, unreported.
void apply_capacity(Tensor& ids, Tensor& weights, int64_t num_experts, int64_t capacity, DropOrder order,
                    Tensor& dropped);

// Noisy top-k gating (Shazeer et al. 2017): h = clean + normal * softplus(raw_noise); all
// [T,E] accum; normal holds standard normal draws (zeros at evaluation).
void noisy_logits_forward(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, Tensor& h);
// dclean = dh (written), draw_noise = dh * normal * sigmoid(raw_noise) (written)
void noisy_logits_backward(const Tensor& raw_noise, const Tensor& normal, const Tensor& dh, Tensor& dclean,
                           Tensor& draw_noise);

// Sigmoid gate on rows (Qwen2-MoE shared experts): x[T,d], gate[T,1] (compute, logits) ->
// y[T,d] = sigmoid(gate) * x.
void row_gate_forward(const Tensor& x, const Tensor& gate, Tensor& y);
// dx[T,d], dgate[T,1] written
void row_gate_backward(const Tensor& x, const Tensor& gate, const Tensor& dy, Tensor& dx, Tensor& dgate);

// Dispatch order: ids i32[T,k] -> sorted_tokens i32[T*k] (token of each row in expert-sorted
// order, stable: by expert, then token, then slot), slot_pos i32[T*k] (row in sorted order of
// slot t*k+s). Slots with id -1 (dropped, or not chosen in expert choice) get no row:
// slot_pos = -1 and only the first sum(counts) rows of sorted_tokens are meaningful. Returns
// rows per expert (host, synchronising).
std::vector<int64_t> moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens,
                                        Tensor& slot_pos);
// The same sort with no host wait: offsets i32[E+1] on ids' device (offsets[e] = first row of
// expert e, offsets[E] = rows used; rows past it have sorted_tokens -1). The CPU checks ids
// (error naming the slot); on the GPU an id outside [-1, E) takes no row, unreported (the
// routers produce ids in range by construction; the host-count form above checks them).
void moe_sort_by_expert(const Tensor& ids, int64_t num_experts, Tensor& sorted_tokens, Tensor& slot_pos,
                        Tensor& offsets);
// The dispatch's permutation in one pass: the no-wait sort above, and x_sorted[r] = x[sorted_tokens[r]]
// for r < N (a zero row where sorted_tokens is -1: rows [offsets[E], N) are zero), bit for bit the
// sort followed by gather_rows(x, sorted_tokens.rows(0, N), x_sorted). x[T,d] (any dtype gather_rows
// takes), x_sorted[N,d] with N <= T*k (rows routed past N are not kept); ids checked as above.
void moe_permute_rows(const Tensor& ids, const Tensor& x, int64_t num_experts, Tensor& sorted_tokens,
                      Tensor& slot_pos, Tensor& offsets, Tensor& x_sorted);
// Rows per expert from offsets i32[E+1] (a host copy: waits for the device); offsets that do not
// start at 0 or decrease are an error prefixed by `who`.
std::vector<int64_t> counts_from_offsets(const Tensor& offsets, const char* who = "expert offsets");
// out[T,d] = sum_s weights[t,s] * y_sorted[slot_pos[t*k+s]] over slots with slot_pos >= 0;
// y_sorted[N,d] with N >= the rows used, weights[T,k] (accum). add_a, add_b [T,d] like out (each
// undefined = none; out may be one of them) are added in the same pass: out = add_a + add_b + the
// combine, one sum rounded once (the block's residual and the shared experts' output).
void moe_combine_forward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights, Tensor& out,
                         const Tensor& add_a = Tensor(), const Tensor& add_b = Tensor());
// The un-permute: out[T,d] = add[t] (undefined = none) + sum_s x_sorted[slot_pos[t*k+s]] over
// slots with a row (k = slot_pos.numel() / T); fp32 sums in slot order (deterministic, unlike a
// scatter-add).
void moe_unpermute_sum(const Tensor& x_sorted, const Tensor& slot_pos, Tensor& out, const Tensor& add = Tensor());

// dy_sorted[N,d] (written; rows no slot uses are zero), dweights[T,k] (accum, written; 0 for
// dropped slots)
void moe_combine_backward(const Tensor& y_sorted, const Tensor& slot_pos, const Tensor& weights,
                          const Tensor& dout, Tensor& dy_sorted, Tensor& dweights);

// The combine's backward without its weights: dy_sorted[N,d] row slot_pos[t*k+s] = dout[t],
// row_weights[N] (accum) at that row = weights[t,s]; rows no slot uses are zero in both (written).
// The weights' gradient then comes from the rows (activation_backward_weighted, moe_gather_slots).
void moe_combine_backward_unweighted(const Tensor& slot_pos, const Tensor& weights, const Tensor& dout,
                                     Tensor& dy_sorted, Tensor& row_weights);
// x[T,d] (any dtype), slot_pos i32[T*k] -> x_sorted[N,d] (written): row slot_pos[t*k+s] = x[t] for
// every slot with a row, each row of x read once; rows no slot uses are zero. Slot rows must lie in
// [-1, N) (the CPU throws naming the slot; the GPU skips rows past N). The dispatch's row move again
// from its saved sort: what gather_rows(x, sorted_tokens.rows(0, N)) gives, without k reads a row.
void moe_scatter_rows(const Tensor& x, const Tensor& slot_pos, Tensor& x_sorted);
// row_values[N] (accum) -> slot_values[T,k] (accum, written): slot n gets row_values[slot_pos[n]],
// 0 where slot_pos[n] = -1.
void moe_gather_slots(const Tensor& row_values, const Tensor& slot_pos, Tensor& slot_values);

// ---- Balancing losses and the aux-loss-free bias on the device (issue 14; docs/routing.md has
// the definitions, kernels/cpu/balance.h the CPU references). Each term writes its value to value
// f64[1] on the inputs' device and no host wait happens; ids are i32 with -1 = no expert (the CPU
// names an id outside [-1, E) in an error, the GPU counts it for no expert). ----
// Switch from sums: score_sums accum[E] (router scores summed over the T tokens), ids i32[T,k]
// -> value = alpha E sum_i f_i P_i, grad_row accum[E] = alpha E f_i / T (written: d value /
// d scores[t,i], the same for every t), f_i = count_i / (k T), P_i = score_sums_i / T.
void switch_balance(const Tensor& score_sums, const Tensor& ids, double alpha, Tensor& value, Tensor& grad_row);
// The same from slots already counted per expert (the router's counts): counts i64[E] of `tokens`
// tokens with `slots` slots each.
void switch_balance_from_counts(const Tensor& score_sums, const Tensor& counts, int64_t tokens, int64_t slots,
                                double alpha, Tensor& value, Tensor& grad_row);
// DeepSeekMoE device-level from sums: score_sums accum[E], ids i32[T,k], `groups` contiguous
// groups of E/groups experts -> value = alpha sum_g f'_g P'_g, grad_row accum[E] = alpha f'_g / T
// (written, the same for every token), f'_g = mean over g of E count_i / (k T), P'_g = sum over g
// of score_sums_i / T.
void device_balance(const Tensor& score_sums, const Tensor& ids, int64_t groups, double alpha, Tensor& value,
                    Tensor& grad_row);
// The same from counts i64[E] of `tokens` tokens with `slots` slots each.
void device_balance_from_counts(const Tensor& score_sums, const Tensor& counts, int64_t tokens, int64_t slots,
                                int64_t groups, double alpha, Tensor& value, Tensor& grad_row);
// Importance: weights accum[T,k], ids i32[T,k] -> value = coef CV(I)^2, I_i = sum of the weights of
// the slots with id i; dweights[T,k] += its gradient (0 at slots without an expert).
void importance_balance(const Tensor& weights, const Tensor& ids, int64_t num_experts, double coef, Tensor& value,
                        Tensor& dweights);
// z-loss: logits accum[T,E] -> value = coef/T sum_t logsumexp(logits_t)^2; dlogits[T,E] += its gradient.
void z_balance(const Tensor& logits, double coef, Tensor& value, Tensor& dlogits);
// Sequence-level: scores accum[T,E], ids i32[T,k], seq_len dividing T -> value = coef * mean over
// sequences of sum_i f_i P_i (per sequence, scores normalised per token); dscores[T,E] += its gradient.
// A token whose scores sum to <= 0 is an error on the CPU and makes NaN on the GPU.
void seq_balance(const Tensor& scores, const Tensor& ids, int64_t seq_len, double coef, Tensor& value,
                 Tensor& dscores);
// Load of noisy top-k gating: clean, raw_noise, normal accum[T,E], k < E -> value = coef CV(Load)^2
// with the smooth estimator; dclean, draw_noise [T,E] += its gradients.
void load_balance(const Tensor& clean, const Tensor& raw_noise, const Tensor& normal, int64_t k, double coef,
                  Tensor& value, Tensor& dclean, Tensor& draw_noise);
// counts i64[E] += the slots of ids i32[...] that went to each expert.
void count_experts(const Tensor& ids, int64_t num_experts, Tensor& counts);
// bias[E] (f32, or f64 on the CPU) -= gamma * sign(loads_i - mean load), loads i64[E] on bias's
// device, in place. skip f32[1] (the step's clip scale; undefined = none): NaN leaves bias alone.
void update_expert_bias(Tensor& bias, const Tensor& loads, double gamma, const Tensor& skip = Tensor());

// AdamW (decoupled weight decay) on one contiguous range; param, grad, m, v same accum dtype.
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p);

// The fused AdamW over one flat range, one launch: master, m, v [n] (f32, or f64 on the CPU;
// updated), grad [n] (master's dtype) times grad_scale (f32[1] on the device: the clip scale;
// undefined = 1), runs i64[R,3] rows (begin, end, AdamWRunKind) covering [0, n) in order: update
// with p.weight_decay (decay) or 0 (no_decay), or leave alone (copy). params [n] (undefined =
// none; compute dtype) <- the master after the update, every element (the compute copy, so no
// separate cast pass follows). A NaN grad_scale skips the update: nothing is written.
void adamw_fused(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const Tensor& runs,
                 const Tensor& grad_scale, const AdamWParams& p, Tensor& params);
// Sums on the device, no host copy: acc f64[1] += weight * sum(x^2) (sum_squares_accumulate:
// gradient norms) or weight * sum(x) (sum_accumulate: loss sums); x f32/f64 (bf16 on CUDA),
// summed in double in a fixed order, so run-to-run deterministic.
void sum_squares_accumulate(const Tensor& x, Tensor& acc, double weight = 1.0);
void sum_accumulate(const Tensor& x, Tensor& acc, double weight = 1.0);
// sum_sq f64[k] -> scale f32[1] = max_norm / norm where max_norm > 0 and norm = sqrt(sum of
// sum_sq) > max_norm, else 1; NaN when the norm is not finite, which makes adamw_fused skip the
// update (computed on the device of the tensors).
void clip_scale(const Tensor& sum_sq, double max_norm, Tensor& scale);
// scale f32[1], state f64[5] (same device; updated, no host copy): the skip record of a run,
// (skipped steps, current run of consecutive skips, longest run, first skipped step, last
// skipped step; 0 = none). `step` (1-based) counts as skipped when scale is NaN.
void record_skipped_step(const Tensor& scale, Tensor& state, int64_t step);

}  // namespace moe::ops

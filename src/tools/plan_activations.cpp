// The activation part of the plan: what each module's forward keeps in its Saved struct and what
// its backward allocates while it runs, tensor by tensor (src/model/*.cpp, experts/*.cpp,
// routing/*.cpp, parallel/*_dispatcher.cpp), so the estimate tracks the allocator's accounting.
#include <algorithm>
#include <cmath>

#include "experts/experts_registry.h"
#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/model/model.h"
#include "src/ops/ops.h"
#include "src/tools/plan.h"
#include "src/train/pipeline_schedule.h"

namespace moe {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t up_width(const std::string& activation, int64_t width) {
  return ops::is_gated(ops::activation_from_name(activation)) ? 2 * width : width;
}

// Element sizes: compute (bf16 on the GPU), accumulation (f32; the router and the statistics),
// and i32 ids.
struct Sizes {
  int64_t cb = 2, ab = 4, ib = 4;
};

// One MoE FFN: its kept bytes, all-to-all part, and the largest working set of its backward.
struct MoeFootprint {
  int64_t kept = 0, all_to_all = 0, backward = 0;
  int64_t forward = 0;  // what its forward holds beyond `kept` at its fullest
};

MoeFootprint moe_footprint(const Config& config, const RouterKind& router, int64_t T_layer, int tp, int ep, Sizes s) {
  const ModelConfig& m = config.model;
  // Tensor parallelism: this rank routes its slice of the layer's T_layer tokens through the
  // whole experts; the shared experts see every token with their width split. Sequence
  // parallelism: the layer's input and output are this rank's slice (T_seq rows), and the shared
  // experts gather their input along the tokens and reduce-scatter their output.
  const int64_t T = ceil_div(T_layer, tp);
  const bool sp = config.parallel.sequence_parallel && tp > 1;
  const int64_t T_seq = sp ? T : T_layer;
  const MoeConfig& moe = config.moe;
  const MoeShape shape = moe_shape(moe);
  const int64_t d = m.d_model, E = shape.num_experts, f = shape.d_expert;
  const std::string act = moe.activation.empty() ? m.activation : moe.activation;
  // A router without parameters (hash) keeps no x, logits or scores; expert choice has E slots per
  // token and its top-1 pair; noisy gating keeps the noise tensors.
  const bool learned = router.learned, choice = !router.token_choice, noisy = router.noisy;
  const int64_t slots = routing_slots(router, moe, shape);  // Routing::ids columns per token
  const bool dropping = router.capacity_dropping && moe.capacity_factor > 0;

  // Routed rows of this rank: dropless T*k; with a capacity at most E*C (token choice);
  // expert choice takes C = min(ceil(c*T/E), T) tokens per expert.
  int64_t rows = T * slots;
  if (choice) rows = E * std::min(static_cast<int64_t>(std::ceil(moe.capacity_factor * T / static_cast<double>(E))), T);
  if (dropping) {
    const double capacity = std::ceil(moe.capacity_factor * static_cast<double>(slots * T) / static_cast<double>(E));
    rows = std::min(rows, E * static_cast<int64_t>(capacity));
  }
  // With expert parallelism each rank's experts receive, on balanced routing, as many rows as
  // the rank sends: the plan assumes balance (imbalance moves rows between ranks).
  const int64_t local_rows = rows, local_experts = E / ep;
  const int64_t max_expert_rows = ceil_div(local_rows, std::max<int64_t>(local_experts, 1));
  const int64_t up_e = up_width(act, f), f_e = f;

  // Balancing gradients the forward keeps (MoeLayerSaved::balance_grads), [T,E] accum each; the
  // Switch and device-level gradients are one row of E numbers (MoeLayerSaved::score_grad_row).
  int64_t balance_te = 0, balance_slots = 0;
  if (learned) {
    balance_te += moe.seq_aux_loss_coef > 0 ? 1 : 0;                          // dscores
    balance_te += moe.z_loss_coef > 0 ? 1 : 0;                                // dlogits
    balance_te += (moe.load_loss_coef > 0 && noisy) ? 2 : 0;                  // dclean, draw_noise
    balance_slots += moe.importance_loss_coef > 0 ? 1 : 0;                    // dweights [T,slots]
  }

  MoeFootprint out;
  // On one rank (the dispatcher's rows are local) the grouped experts keep neither their input nor
  // their output rows: the input is dispatched again in backward (LocalDispatcher::redispatch)
  // and they apply the combine's weights in their backward, which needs no outputs
  // (Experts::backward_weighted).
  const bool grouped = std::string(experts_kind(moe.experts_impl).name) == "grouped";
  const bool local_rows_only = grouped && ep == 1;
  // The FFN-norm output: routers with a projection keep it (RouterSaved::x), and so do shared
  // experts; a hash router reads token ids only and the dispatch copies the rows it needs, unless
  // the layer keeps x to dispatch it again (MoeLayerSaved::routed_input: this rank's T rows).
  int64_t kept = (learned || moe.num_shared_experts > 0) ? T_seq * d * s.cb : local_rows_only ? T * d * s.cb : 0;
  // Router (RouterSaved): logits and scores [T,E]; noisy gating also clean, raw noise, normal
  // draws; ids i32 and weights [T,slots]; expert choice also its top-1 pair [T,1].
  if (learned) kept += (noisy ? 5 : 2) * T * E * s.ab;
  kept += T * slots * (s.ib + s.ab);
  if (choice) kept += T * (s.ib + s.ab);
  if (dropping) kept += T * slots * (s.ib + s.ab);  // dropped copies
  kept += balance_te * T * E * s.ab + balance_slots * T * slots * s.ab;
  kept += 2 * T * slots * s.ib;  // DispatchSaved: sorted_tokens, slot_pos
  // Experts (ExpertsSaved + MoeLayerSaved::y_sorted): input, pre-activation and output rows (the
  // post-activation is made again in backward; see local_rows_only above).
  kept += local_rows * s.cb * ((local_rows_only ? 0 : 2) * d + up_e);
  // Expert parallelism: the outputs back on this rank (combine_rows) and the row maps.
  if (ep > 1) {
    out.all_to_all = rows * d * s.cb + (local_experts > 1 ? 2 * local_rows * s.ib : 0);
    kept += out.all_to_all;
  }
  // Shared experts (SharedExpertsSaved): FFN h, the FFN output, the gate logit.
  const int64_t shared_width = shape.shared_width();
  const int64_t shared_up = up_width(act, shared_width) / tp, shared_mid = shared_width / tp;
  if (moe.num_shared_experts > 0) {
    kept += T_layer * s.cb * shared_up + T_seq * s.cb * (d + (moe.shared_gate ? 1 : 0));
  }
  out.kept = kept;
  // Rows the forward makes and does not keep (one rank, grouped): the input and output rows, both
  // alive until the combine is done.
  out.forward = local_rows_only ? 2 * local_rows * d * s.cb : 0;

  // Backward (MoeLayer::backward): combine -> experts -> dispatch -> shared -> router, with dy
  // [T,d] live throughout and d weights [T,slots] from the combine onwards.
  const int64_t row_bytes = d * s.cb, dy = T * row_bytes, dweights = T * slots * s.ab;
  // da, dh and the post-activation made again, of one expert (loop, ffn_backward); the grouped
  // backward holds da and dh for every local row (the activation is written over da).
  const int64_t expert_temps = grouped ? local_rows * s.cb * (up_e + f_e)
                                       : max_expert_rows * s.cb * (up_e + 2 * f_e);
  int64_t after_dispatch = 0;
  if (local_rows_only) {
    // dy unweighted to the rows (dy_sorted) with their weights; g (overwritten by w * a) and dh
    // (GroupedExperts::backward_weighted); dy_sorted and g freed, the input rows made again beside
    // dh and dx_sorted (up_backward); after it the rows' weight gradients become d weights and
    // dispatch_backward sums dx.
    const int64_t row_weights = 2 * rows * s.ab;  // row_weights, drow_weights
    const int64_t experts_stage = dy + row_weights + rows * s.cb * std::max(d + f_e + up_e, up_e + 2 * d);
    after_dispatch = 2 * dy + rows * row_bytes + dweights + row_weights;
    out.backward = std::max(experts_stage, after_dispatch);
  } else if (ep == 1) {
    const int64_t experts_stage = dy + 2 * rows * row_bytes + dweights + expert_temps;
    after_dispatch = 2 * dy + rows * row_bytes + dweights;  // dy_sorted is freed before dispatch_backward
    out.backward = std::max(experts_stage, after_dispatch);
  } else {
    const int64_t reorder = local_experts > 1 ? local_rows * row_bytes : 0;
    const int64_t combine_stage = dy + rows * row_bytes + dweights + local_rows * row_bytes + reorder;
    const int64_t experts_stage = dy + 2 * local_rows * row_bytes + dweights + expert_temps;
    const int64_t return_stage = dy + 2 * local_rows * row_bytes + dweights + reorder + rows * row_bytes;
    const int64_t scatter_stage = 2 * dy + 2 * local_rows * row_bytes + dweights + rows * row_bytes;
    after_dispatch = 2 * dy + 2 * local_rows * row_bytes + dweights;
    out.backward = std::max({combine_stage, experts_stage, return_stage, scatter_stage});
  }
  if (moe.num_shared_experts > 0) {
    // With the gate, d ffn_out [T,d] stays through the FFN backward (d gate [T,1] is freed before).
    const int64_t gate = moe.shared_gate ? T_seq * s.cb * d : 0;
    // Sequence parallelism: the gathered input, its gradient and the gathered output gradient.
    const int64_t gathered = sp ? 3 * T_layer * s.cb * d : 0;
    const int64_t shared_temps = gate + gathered + T_layer * s.cb * (shared_up + 2 * shared_mid);
    // On the side stream (bf16 = a GPU; parallel.shared_expert_stream) the shared backward is queued
    // first, into its own d x [T,d] that lives through the routed backward; its temporaries are
    // freed (in stream order) before the routed part allocates.
    const bool side_stream =
        s.cb == 2 && config.parallel.shared_expert_stream && tp == 1 && ep == 1;
    if (side_stream) {
      out.backward = std::max(out.backward + dy, 2 * dy + shared_temps);
    } else {
      out.backward = std::max(out.backward, after_dispatch + shared_temps);
    }
  }
  if (learned) {
    // MoeLayer::backward scales copies of the kept balancing gradients; the router adds its own.
    int64_t router = balance_te * T * E * s.ab;
    if (choice) {
      router += 2 * T * E * s.ab + T * s.ab;  // d scores (copy or zeros), d logits, top-1 zeros
    } else {
      router += (noisy ? 3 : 1) * T * E * s.ab;  // d logits (noisy: d clean, d raw noise)
    }
    if (s.cb != s.ab) router += T * E * s.cb;  // the logit gradient cast to the compute dtype
    out.backward = std::max(out.backward, after_dispatch + router);
  }
  return out;
}

// Interleaved 1F1B: min(v m, 2 (p - s - 1) + (v - 1) p + 1) chunk activations in flight
// (pipeline_actions), each chunk keeping its input, its layers' and, the model's last, the
// logits: the most held at once (kept_in_flight), played from the stage's schedule; and the most
// held while a chunk's backward runs, with that chunk's largest working set on top
// (backward_in_flight).
void keep_interleaved(const Config& config, int p, int pp_stage, const std::vector<int64_t>& kept_of_layer,
                      const std::vector<int64_t>& working_of_layer, ActivationPlan& a) {
  const int v = static_cast<int>(config.parallel.pp_virtual);
  std::vector<int64_t> chunk_kept(static_cast<size_t>(v), a.embedding), chunk_working(static_cast<size_t>(v), 0);
  for (int c = 0; c < v; ++c) {
    const auto [from, to] =
        stage_layer_range(config.model.num_layers, p * v, c * p + pp_stage, config.parallel.pp_layers);
    for (int64_t i = from; i < to; ++i) {
      chunk_kept[static_cast<size_t>(c)] += kept_of_layer[static_cast<size_t>(i)];
      chunk_working[static_cast<size_t>(c)] =
          std::max(chunk_working[static_cast<size_t>(c)], working_of_layer[static_cast<size_t>(i)]);
    }
  }
  chunk_kept.back() += a.logits;
  chunk_working.back() = std::max(chunk_working.back(), a.logits_grad);
  int64_t held = 0, chunks = 0, most_chunks = 0;
  a.kept_in_flight = 0;
  const auto micro = static_cast<int>(config.train.grad_accum);
  a.backward_in_flight = 0;
  for (const PipeAction& act : pipeline_actions("1f1b", p, pp_stage, micro, v)) {
    const int sign = act.op == PipeOp::forward ? 1 : -1;
    if (sign < 0) a.backward_in_flight = std::max(a.backward_in_flight, held + chunk_working[static_cast<size_t>(act.chunk)]);
    held += sign * chunk_kept[static_cast<size_t>(act.chunk)];
    chunks += sign;
    a.kept_in_flight = std::max(a.kept_in_flight, held);
    most_chunks = std::max(most_chunks, chunks);
  }
  a.micro_batches = ceil_div(most_chunks, v);
}

}  // namespace

ActivationPlan plan_activations(const Config& config, const Topology& topology, DType compute,
                                const std::vector<int>& layers, bool first, bool last, int pp_stage) {
  const ModelConfig& m = config.model;
  const int tp = topology.tp, ep = topology.ep;
  Sizes s;
  s.cb = static_cast<int64_t>(dtype_size(compute));
  s.ab = static_cast<int64_t>(dtype_size(ops::accum_dtype(compute)));
  const int64_t T = config.train.micro_batch_size * m.seq_len, d = m.d_model;
  const int64_t head_dim = m.d_model / m.num_heads;
  const int64_t q_width = m.num_heads * head_dim / tp, kv_width = m.num_kv_heads * head_dim / tp;
  const int64_t norm_stats = m.norm == "layernorm" ? 2 : 1;  // mean and rstd, or rstd: [T] accum
  // Sequence parallelism: the norms, their outputs and the residual stream hold this rank's Ts
  // tokens; the attention and FFN inside keep their whole-sequence tensors.
  const bool sp = config.parallel.sequence_parallel && tp > 1;
  const int64_t Ts = sp ? ceil_div(T, tp) : T;

  ActivationPlan a;
  a.tokens = T;
  // Per block (BlockSaved without the FFN): attention-norm output, q, k, v, attention output,
  // the residual after attention, the block output (the next block's input); the norms'
  // statistics and the attention log-sum-exp [B,H,S] in the accumulation dtype. The FFN-norm
  // output belongs to the FFN: it lives on only where the FFN keeps it.
  a.attention_layer = Ts * s.cb * 3 * d + T * s.cb * (2 * q_width + 2 * kv_width) +
                      Ts * s.ab * 2 * norm_stats + T * s.ab * (m.num_heads / tp);
  const int64_t dense_up = up_width(m.activation, m.d_ff) / tp, dense_mid = m.d_ff / tp;
  a.dense_ffn = Ts * s.cb * d + T * s.cb * dense_up;  // FfnSaved x (the FFN-norm output), h
  a.embedding = Ts * d * s.cb;                      // the first block's input
  a.batch = 2 * T * s.ib;
  // The chunked head (Model::fused_head_forward) keeps d hidden and the head weight's gradient
  // [V,d] (accum) instead of the hidden states and the logits, and holds one chunk's logits
  // beside the hidden states and the lse while it runs.
  a.head_chunked = last && config.train.head_chunk_tokens > 0 && tp == 1 && m.encoder_layers == 0 &&
                   head_chunk_gains(T, m.vocab_size, d, static_cast<size_t>(s.cb), static_cast<size_t>(s.ab));
  if (a.head_chunked) {
    a.logits = Ts * norm_stats * s.ab + T * d * s.cb + m.vocab_size * d * s.ab;
    a.head_forward = T * d * s.cb + std::min(config.train.head_chunk_tokens, T) * m.vocab_size * s.cb + T * s.ab;
  } else if (last) {
    a.logits = Ts * (d * s.cb + norm_stats * s.ab) + T * ceil_div(m.vocab_size, tp) * s.cb + T * s.ab;
  }

  // Backward working sets of a block, besides what the forward kept: the FFN backward with dy
  // and d x live; the attention backward with dy, the residual gradient, d out, d q, d k, d v and
  // d x (the FFN-input gradient is freed when the FFN half's backward returns: Block::ffn_backward).
  // Sequence parallelism: dy and the residual gradient are this rank's tokens; the input gathered
  // again and its gradient whole, then reduce-scattered (the FFN also gathers dy).
  const int64_t attention_backward = sp ? T * s.cb * (2 * d + 2 * q_width + 2 * kv_width) + 3 * Ts * s.cb * d
                                        : T * s.cb * (3 * d + 2 * q_width + 2 * kv_width);
  // The dense FFN's backward (DenseFfn::backward, ffn_backward): dy and dx, with da, dh and the
  // post-activation made again (sequence parallelism: the gathered input too).
  const int64_t dense_backward = sp ? T * s.cb * (3 * d + 2 * dense_mid + dense_up) + Ts * s.cb * d
                                    : T * s.cb * (2 * d + 2 * dense_mid + dense_up);

  int64_t kept = a.embedding;
  // Activation recomputation: a block keeps its output only (the next block's input) and its
  // backward first rebuilds everything else the block keeps.
  std::vector<int64_t> kept_of_layer(static_cast<size_t>(m.num_layers), 0), working_of_layer = kept_of_layer;
  auto keep_layer = [&](int64_t layer, int64_t layer_kept, int64_t working) {
    kept_of_layer[static_cast<size_t>(layer)] = config.train.recompute ? Ts * d * s.cb : layer_kept;
    kept += kept_of_layer[static_cast<size_t>(layer)];
    a.layer_working.push_back(config.train.recompute ? layer_kept + working : working);
    working_of_layer[static_cast<size_t>(layer)] = a.layer_working.back();
  };
  int64_t moe_index = 0, moe_layers = 0, moe_forward = 0;
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const bool is_moe = config.moe.num_experts > 0 && i >= config.moe.first_dense &&
                        (i - config.moe.first_dense + 1) % config.moe.every == 0;
    const bool here = std::find(layers.begin(), layers.end(), static_cast<int>(i)) != layers.end();
    if (is_moe) {
      MoeFootprint f = moe_footprint(config, moe_layer_router(config.moe, moe_index), T, tp, ep, s);
      ++moe_index;
      if (!here) continue;
      ++moe_layers;
      a.moe_ffn = std::max(a.moe_ffn, f.kept);
      moe_forward = std::max(moe_forward, f.forward);
      a.all_to_all = std::max(a.all_to_all, f.all_to_all);
      keep_layer(i, a.attention_layer + f.kept, std::max(attention_backward, f.backward));
    } else if (here) {
      keep_layer(i, a.attention_layer + a.dense_ffn, std::max(attention_backward, dense_backward));
    }
  }
  a.kept = kept + a.logits;
  a.backward_working = attention_backward;
  for (int64_t w : a.layer_working) a.backward_working = std::max(a.backward_working, w);
  // d logits, d hidden (sequence parallelism: the gathered hidden states, d hidden reduce-scattered)
  if (last && !a.head_chunked) a.logits_grad = T * ceil_div(m.vocab_size, tp) * s.cb + (sp ? 2 * T + Ts : T) * d * s.cb;

  // Micro-batches whose activations are alive together: one (backward follows each forward);
  // two with micro-batch pairs (parallel.a2a_overlap_microbatches); all of the step's with the
  // global_batch balance scope (forwards first); under 1F1B stage s of p holds min(p - s,
  // micro-batches) in flight.
  const int64_t micro = config.train.grad_accum;
  a.micro_batches = config.parallel.a2a_overlap_microbatches ? 2 : 1;
  if (config.moe.balance_scope == "global_batch" && moe_layers > 0) a.micro_batches = micro;
  if (topology.pp > 1) a.micro_batches = std::max(a.micro_batches, std::min<int64_t>(topology.pp - pp_stage, micro));
  a.kept_in_flight = a.micro_batches * a.kept;
  if (topology.pp > 1 && config.parallel.pp_virtual > 1) {
    keep_interleaved(config, topology.pp, pp_stage, kept_of_layer, working_of_layer, a);
  }
  // The trainer keeps every micro-batch's ids of the step (Trainer::train_step's batches).
  const int64_t batches = micro * a.batch;
  // Micro-batch pairs (Model::forward_pair / backward_pair): the other micro-batch's attention
  // output waits for its FFN half in forward; in backward its output gradient and the gradient
  // inside its block are alive beside this one's working set.
  const bool pairs = config.parallel.a2a_overlap_microbatches;
  // The logit and hidden gradients live through the head's backward only (Model::head_backward).
  a.backward_base = a.kept_in_flight + batches + (pairs ? 2 * T * d * s.cb : 0);
  const int64_t backward_peak = a.backward_in_flight > 0
                                    ? a.backward_in_flight + (a.backward_base - a.kept_in_flight)
                                    : a.backward_base + std::max(a.backward_working, a.logits_grad);
  a.forward_peak = a.kept_in_flight + batches + (last ? T * s.ab : 0)  // + per-token losses
                   + (pairs ? T * d * s.cb : 0) + std::max(a.head_forward, moe_forward);
  a.peak = std::max(backward_peak, a.forward_peak);
  return a;
}

}  // namespace moe

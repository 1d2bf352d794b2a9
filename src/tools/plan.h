// Planning a run before launching it (`moe plan`): parameter counts, per-rank memory (model state
// by ZeRO stage, activations, all-to-all buffers, logits) and FLOPs per token for a config on a
// world size; and the ZeRO paper's model-state table. docs/parallel.md explains the model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/topology.h"
#include "src/config/config.h"
#include "src/tensor/dtype.h"

namespace moe {

// ---- parameters: what Model registers, counted without building it ----

struct LayerParams {
  bool moe = false;
  int64_t tp_split = 0;    // split by tensor parallelism: attention, dense FFN, shared experts
  int64_t replicated = 0;  // norms, router (and its buffers), shared-expert gate
  int64_t buffers = 0;     // of which never-trained buffers (the aux-loss-free expert bias)
  int64_t expert = 0;      // routed experts (ParamGroup::expert)
  int64_t dense() const { return tp_split + replicated; }
  int64_t total() const { return tp_split + replicated + expert; }
};

struct ParamCounts {
  int64_t embedding = 0;   // embed.tokens [V,d] (also the LM head when tied)
  int64_t positions = 0;   // embed.positions (learned positions)
  int64_t final_norm = 0;
  int64_t lm_head = 0;     // untied only
  int64_t buffers = 0;     // never-trained buffers (the aux-loss-free expert bias), inside `dense`
  std::vector<LayerParams> layers;
  int64_t dense = 0, expert = 0, total = 0;  // ParamStore group sizes
  // Parameters touched per token, as Model::active_params (routed experts counted k of E times,
  // no positions, no buffers, the token embedding only when it is also the LM head).
  int64_t active = 0;
  int64_t matmul_total = 0;  // the same count with every routed expert (the "total" FLOPs basis)
};
ParamCounts count_params(const ModelConfig& model, const MoeConfig& moe);

// Training FLOPs per token: 6 N + 12 L d S (../shared/anchors.md, as the trainer's MFU).
struct FlopsPerToken {
  double active = 0;  // N = active parameters
  double total = 0;   // N = every parameter that is a matmul (all routed experts)
};
FlopsPerToken flops_per_token(const ModelConfig& model, const ParamCounts& params);

// ---- the ZeRO paper's model (Rajbhandari et al. 2019; ../shared/reference.md) ----

// Per-device bytes of model state for psi parameters over dp data-parallel ranks: fp16/bf16
// parameters (2 psi) and gradients (2 psi), k bytes of optimizer state per parameter (fp32
// master, momentum, variance: k = 12). Stage 0: (4 + k) psi; 1: 4 psi + k psi/dp;
// 2: 2 psi + (2 + k) psi/dp; 3: (4 + k) psi/dp.
double zero_paper_bytes(double psi, int stage, double dp, double k = 12);
// The reference table as computed: 7.5B, 128B and 1T parameters, k = 12, DP 1 to 1024, the
// three sharded stages, in GB (1e9 bytes).
std::string format_zero_table();

// ---- memory of this engine, per rank ----

// Model state of one rank in bytes. This engine (src/train/distributed_optimizer.h): compute-dtype
// parameters, accumulation-dtype (fp32) gradients (one full flat buffer at stage 0/1, the
// reduced shard at stage 2/3), a separate fp32 master only when the compute dtype is narrower
// (bf16), fp32 Adam moments.
struct ModelState {
  int64_t params = 0;      // compute copy (stage 3: this rank's shard)
  int64_t gathered = 0;    // stage 3: the modules gathered in full at the peak (one in use, the next prefetched)
  int64_t grads = 0;       // the full buffer (stage 0/1) or this rank's reduced shard (stage 2/3)
  int64_t open_grads = 0;  // stage 2/3 at the peak: the gradients of the modules in their backward (the
                           // embedding and head modules through the step, one block)
  int64_t master = 0;      // separate fp32 master (bf16 compute), sharded from stage 1; with sharded
                           // master weights, full copies of the buffers
  int64_t moments = 0;     // Adam m and v; sharded from stage 1
  int64_t total() const { return params + gathered + grads + open_grads + master + moments; }
};

// What the forward of one micro-batch keeps for its backward and what backward adds on top
// (bytes, one rank, one micro-batch unless stated). Mirrors the modules' Saved structs.
struct ActivationPlan {
  int64_t tokens = 0;            // T = micro_batch_size * seq_len per micro-batch
  int64_t attention_layer = 0;   // per block: norms, q/k/v/out, residual stream (any FFN)
  int64_t dense_ffn = 0;         // per dense FFN
  int64_t moe_ffn = 0;           // per MoE FFN: router, slots, expert rows, shared experts
  int64_t all_to_all = 0;        // per MoE FFN with ep > 1: the returned rows and row maps (in moe_ffn)
  int64_t embedding = 0;         // stage input: embedding output (or the received activations)
  int64_t logits = 0;            // last stage: final norm output, logits [T,V], their lse; or, with the
                                 // chunked head (train.head_chunk_tokens), the norm statistics, d hidden
                                 // and the head weight's gradient made in forward
  bool head_chunked = false;     // the chunked head: its gradients made in forward
  int64_t head_forward = 0;      // the chunked head's forward working set: hidden, one chunk's logits, lse
  int64_t batch = 0;             // input and target ids of one micro-batch
  int64_t kept = 0;              // one micro-batch of this stage: everything above, summed over its layers
  int64_t micro_batches = 1;     // kept at once (1F1B in flight, or global_batch balance scope; interleaved:
                                 // the chunks in flight in micro-batches, rounded up)
  int64_t kept_in_flight = 0;    // the most kept at once: micro_batches * kept, or the interleaved chunks'
  int64_t logits_grad = 0;       // last stage: d logits and d hidden (live through the head's backward)
  int64_t backward_working = 0;  // the largest block-backward working set (gradients in flight)
  std::vector<int64_t> layer_working;  // that working set of each of the stage's layers, in order
  int64_t backward_base = 0;     // live through the backward: kept_in_flight + batches
  int64_t backward_in_flight = 0;  // interleaved pipelines: the most kept while a chunk's backward runs,
                                   // plus that chunk's largest working set (0 otherwise)
  int64_t forward_peak = 0;      // the forward's end: kept_in_flight, the step's ids, per-token losses
  int64_t peak = 0;              // backward_base + max(backward_working, logits_grad), or forward_peak
};

struct Plan {
  explicit Plan(const Topology& t) : topology(t) {}
  Topology topology;
  bool cuda = true;
  DType compute = DType::bf16, accum = DType::f32;
  ParamCounts params;
  FlopsPerToken flops;
  int stage = 0;                        // the pipeline stage planned (the one with the highest peak)
  std::vector<int> stage_layers;        // its layer indices
  int64_t rank_dense = 0, rank_expert = 0;  // parameters this rank holds (its stage, TP slice, EP slice)
  int64_t rank_buffers = 0;             // of which buffers (dense group)
  int64_t largest_module = 0;           // the largest module on this rank ("layers.<i>", "embed", ...)
  std::vector<int64_t> layer_modules;   // parameters of each stage layer on this rank (ZeRO-3 gathers one)
  int64_t head_module = 0;              // the LM head's module ("embed" when tied) on the last stage
  int64_t sharded_activations[4] = {0, 0, 0, 0};  // stage 2/3: activations live at that stage's peak moment
  ModelState engine[4];                 // this engine's model state at ZeRO stage 0..3
  double paper[4] = {0, 0, 0, 0};       // the paper's 2 + 2 + 12 bytes model on the same shards
  int64_t reduce_staging = 0;           // stage 1/2: what the compute copy's all-gather after the step stages
  ActivationPlan activations;
  int zero = 0;                         // parallel.zero of the config
  int64_t peak = 0;                     // estimated allocator high-water mark at parallel.zero
  int64_t peak_at(int stage) const;
};

// The plan of the busiest rank of `config` on world_size ranks. device "" follows
// train.device ("auto" plans the GPU), else "cpu" or "cuda"; the dtype follows train.dtype.
// Throws for impossible layouts (the Topology messages) and bad world sizes.
Plan make_plan(const Config& config, int world_size, const std::string& device = "");
// The human-readable report `moe plan` prints.
std::string format_plan(const Plan& plan, const Config& config);

// The activation model alone (src/tools/plan_activations.cpp), for one pipeline stage holding
// `layers`; first/last say whether it holds the embedding and the LM head.
ActivationPlan plan_activations(const Config& config, const Topology& topology, DType compute,
                                const std::vector<int>& layers, bool first, bool last, int pp_stage);

}  // namespace moe

// Dense-to-MoE upcycling: builds an MoE model's parameters from a dense checkpoint of this
// engine (sparse upcycling, granular "virtual group" upcycling, Qwen2-MoE partial re-init).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/model/model.h"

namespace moe {

// copy:           every expert = the dense FFN (Komatsuzaki et al. 2022, sparse upcycling).
// fine_grained:   expert e = hidden segment e % G of the dense FFN, scaled; router columns
//                 duplicated per virtual group of G experts (He et al. 2024, arXiv 2410.07524).
// partial_reinit: expert e = the first d_expert units of a seeded shuffle of the dense hidden
//                 units, a fraction of the entries re-drawn (Qwen2-MoE / Qwen1.5-MoE).
// docs/upcycling.md has the formulas.
enum class UpcycleMode { copy, fine_grained, partial_reinit };
UpcycleMode upcycle_mode_from_name(const std::string& name);  // throws naming the value
const char* upcycle_mode_name(UpcycleMode mode);

struct UpcycleOptions {
  UpcycleMode mode = UpcycleMode::copy;
  double reinit_fraction = 0.5;  // partial_reinit: share of each expert matrix's entries re-drawn
  uint64_t seed = 0;             // target initialisation, hidden-unit shuffles, re-initialisation
};

// What was built for one MoE layer.
struct UpcycledLayer {
  int64_t layer = 0;
  int64_t num_experts = 0, d_expert = 0, d_dense = 0;  // E, expert width, dense d_ff
  int64_t top_k = 0;                                   // routed slots per token (after granularity)
  int64_t groups = 1, replicas = 0;                    // fine_grained: G = d_dense / d_expert, R = E / G
  double scale = 1.0;                                  // fine_grained: s (see fine_grained_scale)
  int64_t reinit_entries = 0;                          // partial_reinit: entries re-drawn, all experts
  int64_t expert_entries = 0;                          // entries of w_up and w_down, all experts
};

struct UpcycleResult {
  std::vector<std::string> copied;    // target parameters copied unchanged from the dense model
  std::vector<UpcycledLayer> layers;  // one per MoE layer, in layer order
  std::vector<std::string> warnings;  // combinations that work but lose the stated guarantees
};

// Whether the router's selected weights sum to one (softmax_topk with moe.renormalize,
// topk_softmax, noisy_topk outside training, sigmoid). Reads moe.router: pass a copy with the
// layer's entry of moe.layer_routers applied (upcycle_weights does).
bool router_renormalizes(const MoeConfig& moe);
// Fine-grained scale s for E experts in R = E/G virtual groups of G, k routed slots per
// token: G with renormalised weights, R*G*G/k (= G*E/k) for softmax_topk without.
double fine_grained_scale(const MoeConfig& moe, int64_t num_experts, int64_t groups, int64_t top_k);

// Overwrites the parameters of `target` (allocated on the CPU and initialised) from the dense
// weights (canonical name -> host tensor): every target parameter found there is copied
// (shapes must match); each MoE layer's experts (and shared experts) are built from the dense
// "layers.<i>.ffn.*" by options.mode. Every dense parameter must find a place in the target.
// source_activation is the dense FFN's (model.activation of the source); source_name names
// the source in messages.
UpcycleResult upcycle_weights(const std::map<std::string, Tensor>& dense, const std::string& source_activation,
                              Model& target, const UpcycleOptions& options, const std::string& source_name);

// The `moe upcycle` work: reads from_dir/model.safetensors and from_dir/config.toml, builds the
// target Model on the CPU in f32, initialises it with options.seed, upcycles, and writes out_dir
// as a step-0 checkpoint (zero AdamW moments, the target config) that `moe train` resumes with
// train.resume = out_dir; plus out_dir/upcycle.json recording the mode, seed and per-layer G, R, s.
UpcycleResult upcycle_checkpoint(const std::string& from_dir, const Config& target, const std::string& out_dir,
                                 const UpcycleOptions& options);

// The part of upcycle_checkpoint after the source is read: dense (canonical name -> host
// tensor, e.g. from read_hf_model for `moe upcycle --from-hf`) upcycled into target, written
// to out_dir with upcycle.json; source_name names the source in messages and upcycle.json.
UpcycleResult upcycle_from_weights(const std::map<std::string, Tensor>& dense, const std::string& source_activation,
                                   const Config& target, const std::string& out_dir, const UpcycleOptions& options,
                                   const std::string& source_name);

}  // namespace moe

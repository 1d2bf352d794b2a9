// The decoder-only language model: token (and learned position) embedding, blocks, final
// norm, LM head (tied or untied) and the cross-entropy loss, built from the config.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/model/block.h"

namespace moe {

struct Batch {
  Tensor inputs;   // i32[B*S] on the model's device
  Tensor targets;  // i32[B*S]; negative = ignored
  int64_t batch_size = 0;
  bool training = true;        // noisy gating draws noise only in training
  uint64_t noise_seed = 0;     // distinct per (step, micro-batch) in training
  bool collect_stats = false;  // router entropy for the metrics (costs a host copy)
};

struct ModelSaved {
  std::vector<BlockSaved> blocks;
  Norm::Saved final_norm;
  Tensor hidden;  // final normed hidden states [B*S,d]
  Tensor logits, lse;
};

struct ForwardOutput {
  double loss_sum = 0;     // sum of per-token cross-entropy over non-ignored targets
  int64_t num_targets = 0;
  double aux_loss = 0;     // sum over MoE layers of their balancing losses
  std::vector<MoeLayerStats> moe_stats;  // one per MoE layer, in layer order
  std::vector<int> moe_layer_index;      // the layer number of each entry above
};

class Model {
 public:
  // ep_group: expert parallelism (the routed experts split over it); nullptr = all local.
  Model(const ModelConfig& model, const MoeConfig& moe, Communicator* ep_group = nullptr);
  void allocate(Device device, DType compute_dtype);
  void initialize(uint64_t seed) { store_.initialize(seed); }

  // Forward with the loss. Keeps what backward needs in saved.
  ForwardOutput forward(const Batch& batch, ModelSaved& saved) const;
  // Accumulates parameter gradients of  loss_scale * loss_sum + aux_scale * aux_loss.
  void backward(const Batch& batch, const ModelSaved& saved, float loss_scale, float aux_scale) const;
  // Logits [B*S, V] for generation (no loss).
  Tensor logits(const Tensor& inputs, int64_t batch_size) const;

  // ZeRO-3: called with (unit, true) before a unit's parameters are read and (unit, false)
  // after; units are "embed", "layers.<i>", "final_norm", "lm_head" (the registration groups).
  using ParamHook = std::function<void(const std::string& unit, bool acquire)>;
  void set_param_hook(ParamHook hook) { param_hook_ = std::move(hook); }
  // Called with "layers.<i>" as soon as block i's backward has produced its gradients (the
  // trainer starts their reduction there, overlapping the rest of the backward); empty = none.
  using GradHook = std::function<void(const std::string& unit)>;
  void set_grad_hook(GradHook hook) { grad_hook_ = std::move(hook); }

  ParamStore& params() { return store_; }
  const ParamStore& params() const { return store_; }
  const ModelConfig& config() const { return config_; }
  const MoeConfig& moe_config() const { return moe_config_; }
  int64_t num_moe_layers() const;
  // Aux-loss-free balancing: b <- b - rate * sign(load - mean) per MoE layer with a bias,
  // from the step's global loads (one vector of tokens per expert per MoE layer, in order).
  void update_expert_biases(const std::vector<std::vector<int64_t>>& loads, double rate);
  // balance_scope = global_batch: the Switch gradient of each MoE layer (in order) for one
  // micro-batch's saved forward, with the loss value of the whole step.
  void set_switch_gradients(ModelSaved& saved, const std::vector<std::vector<double>>& grad_per_expert,
                            const std::vector<double>& values) const;
  // The current expert biases, one vector per MoE layer (empty where the router has none).
  std::vector<std::vector<double>> expert_biases() const;
  // Parameters touched per token (the routed experts counted k of E times), for MFU.
  int64_t active_params() const;
  // All parameters of the model, expert rows held by other EP ranks included.
  int64_t total_params() const;

 private:
  Tensor embed(const Tensor& inputs) const;
  Tensor run_blocks(const Tensor& x, const Batch& batch, ModelSaved& saved) const;

  ModelConfig config_;
  MoeConfig moe_config_;
  ParamStore store_;
  ParamId tokens_ = -1, positions_ = -1, lm_head_ = -1;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Norm> final_norm_;
  ParamHook param_hook_;
  GradHook grad_hook_;
  void acquire(const std::string& unit) const { if (param_hook_) param_hook_(unit, true); }
  void release(const std::string& unit) const { if (param_hook_) param_hook_(unit, false); }
  std::string head_unit() const { return lm_head_ >= 0 ? "lm_head" : "embed"; }
};

// Whether layer i (0-based) of this config is an MoE layer.
bool is_moe_layer(const ModelConfig& model, const MoeConfig& moe, int64_t layer);
// The MoE layer shape and options of this config (fine-grained segmentation applied).
MoeLayerConfig moe_layer_config(const ModelConfig& model, const MoeConfig& moe, ops::Activation act,
                                double out_init_std);

}  // namespace moe

// Parameters in flat buffers grouped by how they are synchronised (dense over the DP group,
// expert over the expert-DP group), each with a canonical name, shape and weight-decay flag.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/tensor/tensor.h"

namespace moe {

enum class ParamGroup : uint8_t { dense = 0, expert = 1 };
constexpr int k_num_param_groups = 2;

enum class ParamInit : uint8_t { normal, zeros, ones };

// What a parameter is, which decides its default weight decay (none on norms, biases and
// embeddings unless the optimizer config says otherwise).
// Buffers (the aux-loss-free expert bias) are state saved with the weights but never trained:
// no gradient reaches them and the optimizer skips them.
enum class ParamKind : uint8_t { weight, norm_or_bias, embedding, buffer };

struct ParamInfo {
  std::string name;  // canonical, e.g. "layers.3.moe.experts.w_up"
  Shape shape;
  ParamGroup group = ParamGroup::dense;
  ParamKind kind = ParamKind::weight;
  ParamInit init = ParamInit::normal;
  double init_std = 0.02;
  int64_t offset = 0;  // element offset in its group's flat buffers
  int64_t numel() const { return shape_numel(shape); }
};

using ParamId = int32_t;

// Register all parameters first, then allocate(): every buffer is one flat tensor per group.
// On the CPU the parameters are their own master copy; with bf16 compute, `master` is a
// separate fp32 buffer and `params` the bf16 copy the kernels read.
class ParamStore {
 public:
  ParamId add(const std::string& name, const Shape& shape, ParamGroup group, ParamKind kind,
              ParamInit init = ParamInit::normal, double init_std = 0.02);
  void allocate(Device device, DType compute_dtype);
  // Deterministic initialisation: each parameter's values depend only on (seed, name), so
  // any parallel layout builds the same model.
  void initialize(uint64_t seed);

  const std::vector<ParamInfo>& infos() const { return infos_; }
  const ParamInfo& info(ParamId id) const { return infos_.at(static_cast<size_t>(id)); }
  ParamId find(const std::string& name) const;  // throws naming the parameter
  int64_t group_numel(ParamGroup g) const { return group_numel_[static_cast<int>(g)]; }
  int64_t total_numel() const;

  Tensor param(ParamId id) const { return view(params_, id); }
  Tensor grad(ParamId id) const { return view(grads_, id); }
  Tensor master(ParamId id) const { return view(master_or_params(), id); }

  Tensor& flat_params(ParamGroup g) { return params_[static_cast<int>(g)]; }
  Tensor& flat_grads(ParamGroup g) { return grads_[static_cast<int>(g)]; }
  Tensor& flat_master(ParamGroup g);
  bool has_separate_master() const { return separate_master_; }

  void zero_grads();
  // After an optimizer step on the master copy: refresh the compute copy (bf16 cast).
  void sync_params_from_master();
  // Host copies of the master values as f32 (checkpoints) and loading them back.
  Tensor master_to_host_f32(ParamId id) const;
  void load_master_from_host(ParamId id, const Tensor& host_values);

  Device device() const { return device_; }
  DType compute_dtype() const { return compute_dtype_; }

 private:
  Tensor view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const;
  const Tensor (&master_or_params() const)[k_num_param_groups] { return separate_master_ ? master_ : params_; }

  std::vector<ParamInfo> infos_;
  std::map<std::string, ParamId> by_name_;
  int64_t group_numel_[k_num_param_groups] = {0, 0};
  Tensor params_[k_num_param_groups];
  Tensor grads_[k_num_param_groups];
  Tensor master_[k_num_param_groups];
  bool separate_master_ = false;
  bool allocated_ = false;
  Device device_;
  DType compute_dtype_ = DType::f32;
};

}  // namespace moe

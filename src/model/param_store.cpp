// Flat parameter buffers: registration, allocation, name-seeded initialisation, and the
// master/compute copies used by mixed precision.
#include "src/model/param_store.h"

#include <cmath>
#include <random>

#include "src/ops/ops.h"

namespace moe {

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

ParamId ParamStore::add(const std::string& name, const Shape& shape, ParamGroup group, ParamKind kind, ParamInit init,
                        double init_std) {
  MOE_CHECK(!allocated_, "parameter '", name, "' added after allocation");
  MOE_CHECK(!by_name_.count(name), "duplicate parameter name '", name, "'");
  ParamInfo info{name, shape, group, kind, init, init_std, group_numel_[static_cast<int>(group)]};
  group_numel_[static_cast<int>(group)] += info.numel();
  infos_.push_back(info);
  auto id = static_cast<ParamId>(infos_.size() - 1);
  by_name_[name] = id;
  return id;
}

ParamId ParamStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  MOE_CHECK(it != by_name_.end(), "unknown parameter '", name, "'");
  return it->second;
}

int64_t ParamStore::total_numel() const { return group_numel_[0] + group_numel_[1]; }

void ParamStore::allocate(Device device, DType compute_dtype) {
  MOE_CHECK(!allocated_, "parameters allocated twice");
  device_ = device;
  compute_dtype_ = compute_dtype;
  DType accum = ops::accum_dtype(compute_dtype);
  separate_master_ = accum != compute_dtype;
  for (int g = 0; g < k_num_param_groups; ++g) {
    params_[g] = Tensor::zeros({group_numel_[g]}, compute_dtype, device);
    grads_[g] = Tensor::zeros({group_numel_[g]}, accum, device);
    if (separate_master_) master_[g] = Tensor::zeros({group_numel_[g]}, accum, device);
  }
  allocated_ = true;
}

Tensor& ParamStore::flat_master(ParamGroup g) {
  return separate_master_ ? master_[static_cast<int>(g)] : params_[static_cast<int>(g)];
}

Tensor ParamStore::view(const Tensor (&buffers)[k_num_param_groups], ParamId id) const {
  MOE_CHECK(allocated_, "parameters used before allocation");
  const ParamInfo& p = info(id);
  return buffers[static_cast<int>(p.group)].rows(p.offset, p.offset + p.numel()).view(p.shape);
}

void ParamStore::initialize(uint64_t seed) {
  for (size_t i = 0; i < infos_.size(); ++i) {
    const ParamInfo& p = infos_[i];
    std::vector<double> values(static_cast<size_t>(p.numel()));
    if (p.init == ParamInit::ones) {
      std::fill(values.begin(), values.end(), 1.0);
    } else if (p.init == ParamInit::normal) {
      std::mt19937_64 rng(seed ^ fnv1a(p.name));
      std::normal_distribution<double> dist(0.0, p.init_std);
      for (auto& v : values) v = dist(rng);
    }
    Tensor host = Tensor::from_vector(values, p.shape, DType::f64);
    load_master_from_host(static_cast<ParamId>(i), host);
  }
}

void ParamStore::zero_grads() {
  for (auto& g : grads_) g.zero_();
}

void ParamStore::sync_params_from_master() {
  if (!separate_master_) return;
  for (int g = 0; g < k_num_param_groups; ++g) ops::cast(master_[g], params_[g]);
}

Tensor ParamStore::master_to_host_f32(ParamId id) const {
  Tensor m = master(id);
  auto values = m.to_vector<float>();
  return Tensor::from_vector(values, m.shape(), DType::f32);
}

void ParamStore::load_master_from_host(ParamId id, const Tensor& host_values) {
  const ParamInfo& p = info(id);
  MOE_CHECK(host_values.shape() == p.shape, "parameter '", p.name, "' has shape ", shape_str(p.shape),
            ", loaded values have ", shape_str(host_values.shape()));
  Tensor target = master(id);
  // Convert on the host to the master dtype, then copy to the device.
  Tensor converted;
  if (target.dtype() == DType::f64) {
    converted = Tensor::from_vector(host_values.to_vector<double>(), p.shape, DType::f64);
  } else {
    converted = Tensor::from_vector(host_values.to_vector<float>(), p.shape, DType::f32);
  }
  target.copy_from(converted);
  if (separate_master_) {
    Tensor compute = param(id);
    ops::cast(target, compute);
  }
}

}  // namespace moe

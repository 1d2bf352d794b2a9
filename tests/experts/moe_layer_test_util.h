// Shared set-up of the MoE layer tests: a small layer built from a spec (router, capacity,
// shared experts, balancing terms), its token batch, and helpers reading its statistics.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "experts/moe_layer.h"
#include "routing/balancing_terms.h"
#include "routing/router_registry.h"
#include "tests/test_util.h"

namespace moe::layer_test {

constexpr double k_init_std = 0.5;  // large weights: gradients far from zero, routing far from ties
constexpr int64_t k_tokens = 12, k_seq_len = 4, k_d = 6, k_experts = 4, k_d_expert = 5, k_vocab = 11;

// One MoE layer's options: the router by its moe.router name (built by make_router) and the
// MoeLayerConfig fields under test.
struct LayerSpec {
  const char* name = "";
  std::string router = "softmax_topk";
  bool renormalize = true;
  int64_t top_k = 2;
  ops::Activation act = ops::Activation::swiglu;
  int64_t num_groups = 0, top_groups = 0;
  double capacity_factor = 0;
  ops::DropOrder drop_order = ops::DropOrder::by_probability;
  int64_t num_shared = 0, d_shared = 0;
  bool shared_gate = false;
  BalancingConfig balancing;
  bool bias = false;  // an expert bias buffer, set by hand to nonzero values
  bool pool_sums = false;  // the Switch sums kept for the trainer to pool (as balance_scope = global_batch)
  bool a2a_overlap = false;  // the phase order of parallel.a2a_overlap (on the local dispatcher here)
};

struct TestLayer {
  ParamStore store;
  std::unique_ptr<MoeLayer> moe;
};

inline std::unique_ptr<TestLayer> build_layer(const LayerSpec& s, uint64_t seed) {
  auto layer = std::make_unique<TestLayer>();
  MoeConfig mc;
  mc.num_experts = k_experts;
  mc.top_k = s.top_k;
  mc.renormalize = s.renormalize;
  mc.router = s.router;
  mc.num_groups = s.num_groups;
  mc.top_groups = s.top_groups;
  mc.capacity_factor = s.capacity_factor;
  mc.expert_bias_rate = s.bias ? 0.01 : 0.0;
  mc.hash_kind = "random";
  mc.hash_seed = 3;
  // [moe] as a run config would hold the terms: a top-k router then makes the Switch statistics.
  for (const BalancingTerm& term : balancing_terms()) mc.*term.config_coef = s.balancing.*term.coef;
  mc.device_groups = s.balancing.device_groups;
  mc.aux_count = s.balancing.aux_count == AuxCount::kept ? "kept" : "routed";
  RouterSpec spec{k_d, k_vocab, k_experts, s.top_k, 0, k_init_std};
  MoeLayerConfig c;
  c.d_model = k_d;
  c.num_experts = k_experts;
  c.d_expert = k_d_expert;
  c.activation = s.act;
  c.capacity_factor = s.capacity_factor;
  c.drop_order = s.drop_order;
  c.num_shared = s.num_shared;
  c.d_shared = s.d_shared;
  c.shared_gate = s.shared_gate;
  c.balancing = s.balancing;
  c.init_std = k_init_std;
  c.out_init_std = k_init_std;
  c.pool_balance_sums = s.pool_sums;
  c.a2a_overlap = s.a2a_overlap;
  layer->moe = std::make_unique<MoeLayer>(layer->store, "moe", c, make_router(layer->store, "moe.router", mc, spec));
  ParamStore& store = layer->store;
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(seed);
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const ParamInfo& p = store.info(id);
    if (p.name == "moe.router.noise_weight") {  // zero-initialised (Shazeer et al.): make it matter
      store.load_master_from_host(id, test::f64_tensor(test::random_values(p.numel(), seed + 1, -0.5, 0.5), p.shape));
    } else if (p.name == "moe.router.expert_bias") {
      std::vector<double> b;
      for (int64_t e = 0; e < k_experts; ++e) b.push_back((e % 2 == 0 ? 0.3 : -0.3) + 0.02 * static_cast<double>(e));
      store.load_master_from_host(id, test::f64_tensor(b, p.shape));
    }
  }
  return layer;
}

inline std::vector<int32_t> batch_tokens(uint64_t seed) {
  return test::random_ids(k_tokens, k_vocab, seed).to_vector<int32_t>();
}

// Slots per expert of an ids list (-1 = no expert).
inline std::vector<int64_t> count_ids(const std::vector<int32_t>& ids) {
  std::vector<int64_t> c(static_cast<size_t>(k_experts), 0);
  for (int32_t e : ids)
    if (e >= 0) ++c[static_cast<size_t>(e)];
  return c;
}

inline std::vector<std::string> enabled_terms(const BalancingConfig& b) {
  std::vector<std::string> out;  // std::map order
  if (b.device_coef > 0) out.push_back("device");
  if (b.importance_coef > 0) out.push_back("importance");
  if (b.load_coef > 0) out.push_back("load");
  if (b.seq_coef > 0) out.push_back("seq");
  if (b.switch_coef > 0) out.push_back("switch");
  if (b.z_coef > 0) out.push_back("z");
  return out;
}

inline std::vector<std::string> keys(const std::map<std::string, double>& m) {
  std::vector<std::string> out;
  for (const auto& [k, v] : m) out.push_back(k);
  return out;
}

}  // namespace moe::layer_test

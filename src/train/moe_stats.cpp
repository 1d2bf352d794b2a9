// Routing statistics: accumulation over micro-batches, reduction over ranks, JSON.
#include "src/train/moe_stats.h"

#include <algorithm>
#include <cmath>

#include "routing/balancing_terms.h"

namespace moe {

void accumulate_routing_stats(std::vector<LayerRoutingStats>& step, const std::vector<MoeLayerStats>& micro,
                              const std::vector<int>& layers, double mean_weight) {
  MOE_CHECK(layers.size() == micro.size(), "routing statistics of ", micro.size(), " layers with ", layers.size(),
            " layer numbers");
  for (size_t i = 0; i < micro.size(); ++i) {
    auto it = std::find_if(step.begin(), step.end(), [&](const LayerRoutingStats& s) { return s.layer == layers[i]; });
    if (it == step.end()) {
      LayerRoutingStats fresh;
      fresh.layer = layers[i];
      fresh.tokens_per_expert.assign(micro[i].tokens_per_expert.size(), 0);
      step.push_back(fresh);
      it = step.end() - 1;
    }
    LayerRoutingStats& s = *it;
    // A GPU forward that collected no statistics brings no counts (they stayed on the device).
    if (s.tokens_per_expert.empty()) s.tokens_per_expert.assign(micro[i].tokens_per_expert.size(), 0);
    MOE_CHECK(micro[i].tokens_per_expert.empty() || s.tokens_per_expert.size() == micro[i].tokens_per_expert.size(),
              "layer ", layers[i], ": ", micro[i].tokens_per_expert.size(), " experts added to ",
              s.tokens_per_expert.size());
    for (size_t e = 0; e < micro[i].tokens_per_expert.size(); ++e) {
      s.tokens_per_expert[e] += micro[i].tokens_per_expert[e];
    }
    s.slots += micro[i].slots;
    s.dropped += micro[i].dropped;
    for (const auto& [name, value] : micro[i].balance) s.balance[name] += value * mean_weight;
    s.aux_loss += micro[i].aux_loss * mean_weight;
    s.entropy += micro[i].entropy * mean_weight;
  }
}

void reduce_routing_stats(std::vector<LayerRoutingStats>& step, Communicator& world, int ranks_per_layer) {
  if (world.size() == 1) return;
  // One host all-reduce: counts and sums are added, means are added then divided by the ranks.
  std::vector<double> packed;
  for (const auto& s : step) {
    for (int64_t n : s.tokens_per_expert) packed.push_back(static_cast<double>(n));
    packed.push_back(static_cast<double>(s.slots));
    packed.push_back(static_cast<double>(s.dropped));
    // A fixed list of terms with a presence flag: ranks of other pipeline stages hold none for
    // this layer, so the packed vectors must not depend on which terms a rank has.
    for (const BalancingTerm& term : balancing_terms()) {
      auto it = s.balance.find(term.name);
      packed.push_back(it != s.balance.end() ? it->second : 0.0);
      packed.push_back(it != s.balance.end() ? 1.0 : 0.0);
    }
    packed.push_back(s.aux_loss);
    packed.push_back(s.entropy);
  }
  world.all_reduce_sum(packed);
  const double ranks = ranks_per_layer > 0 ? ranks_per_layer : world.size();
  size_t k = 0;
  for (auto& s : step) {
    for (auto& n : s.tokens_per_expert) n = std::llround(packed[k++]);
    s.slots = std::llround(packed[k++]);
    s.dropped = std::llround(packed[k++]);
    for (const BalancingTerm& term : balancing_terms()) {
      const double value = packed[k++];
      if (packed[k++] > 0) s.balance[term.name] = value / ranks;
    }
    s.aux_loss = packed[k++] / ranks;
    s.entropy = packed[k++] / ranks;
  }
}

nlohmann::json routing_stats_json(const LayerRoutingStats& s) {
  LoadStats load = load_stats(s.tokens_per_expert, {}, static_cast<int64_t>(s.tokens_per_expert.size()));
  nlohmann::json out = {{"layer", s.layer},
                        {"tokens_per_expert", s.tokens_per_expert},
                        {"max_over_mean", load.max_over_mean},
                        {"cv", load.cv},
                        {"dropped_fraction", s.slots > 0 ? static_cast<double>(s.dropped) / s.slots : 0.0},
                        {"aux_loss", s.aux_loss},
                        {"entropy", s.entropy}};
  for (const auto& [name, value] : s.balance) out["balance"][name] = value;
  if (!s.bias.empty()) {
    auto [lo, hi] = std::minmax_element(s.bias.begin(), s.bias.end());
    double mean_abs = 0;
    for (double b : s.bias) mean_abs += std::abs(b) / static_cast<double>(s.bias.size());
    out["bias"] = {{"min", *lo}, {"max", *hi}, {"mean_abs", mean_abs}};
  }
  return out;
}

}  // namespace moe

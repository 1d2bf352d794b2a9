// Per-MoE-layer routing statistics of one optimizer step: summed or averaged over the step's
// micro-batches and the data-parallel ranks, then written into the metrics.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experts/moe_layer.h"
#include "parallel/communicator.h"

namespace moe {

struct LayerRoutingStats {
  int layer = 0;
  std::vector<int64_t> tokens_per_expert;  // summed over micro-batches and ranks
  int64_t slots = 0, dropped = 0;          // summed
  std::map<std::string, double> balance;   // each term, mean over micro-batches and ranks
  double aux_loss = 0;                     // mean over micro-batches and ranks
  double entropy = 0;                      // mean (when collected)
  std::vector<double> bias;                // the expert bias after the step (aux-loss-free), if any
};

// Adds one micro-batch's layer statistics (layers[i] is the layer of micro[i]) into the entry
// of the same layer, appended when step has none, with weight `mean_weight` for the averaged
// fields.
void accumulate_routing_stats(std::vector<LayerRoutingStats>& step, const std::vector<MoeLayerStats>& micro,
                              const std::vector<int>& layers, double mean_weight);
// Sums the statistics over the ranks of `world` (every rank gets the result) and divides the
// averaged fields by ranks_per_layer (the ranks that report each layer: the world size, or
// its share of one pipeline stage; 0 = the world size). Every rank lists the same layers.
void reduce_routing_stats(std::vector<LayerRoutingStats>& step, Communicator& world, int ranks_per_layer = 0);
// The metrics object of one layer: loads, max/mean, CV, dropped fraction, entropy, each
// balancing term, bias statistics.
nlohmann::json routing_stats_json(const LayerRoutingStats& s);

}  // namespace moe

// The process-group layout of a job: world = pp x dp x tp ranks in a configurable order, with
// expert-parallel groups carved out of the data-parallel ranks; and the communicators built from it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/config/config.h"

namespace moe {

enum class GroupKind { tp, dp, ep, expert_dp, pp };
const char* group_kind_name(GroupKind kind);  // "tp", "dp", "ep", "expert-dp", "pp"

// Where one rank sits. dp_rank = edp_rank * ep + ep_rank: an EP group is ep consecutive
// data-parallel ranks, and the expert-data-parallel group joins the ranks with the same ep_rank
// (the ones that hold the same experts).
struct RankCoords {
  int tp = 0, dp = 0, pp = 0, ep = 0, edp = 0;
  bool operator==(const RankCoords&) const = default;
};

// Sizes and this rank's coordinates. The rank order is parallel.order, fastest-varying dimension
// first: "tp-dp-pp" means rank = tp_rank + tp * (dp_rank + dp * pp_rank).
struct Topology {
  int world_size = 1, rank = 0;
  int tp = 1, dp = 1, pp = 1, ep = 1, edp = 1;  // edp = dp / ep: the expert-data-parallel size
  std::array<GroupKind, 3> order{GroupKind::tp, GroupKind::dp, GroupKind::pp};  // fastest first
  RankCoords coords;  // of `rank`

  // Throws, naming the product that does not divide: "world size 6 is not divisible by
  // parallel.tp * parallel.pp = 4", "parallel.ep = 3 does not divide the data-parallel size 4".
  Topology(const ParallelConfig& parallel, int world_size, int rank);
  // The same, and parallel.ep must also divide the routed experts of an MoE model
  // (check_expert_parallel).
  static Topology from_config(const Config& config, int world_size, int rank);

  RankCoords coords_of(int rank) const;
  int rank_of(int tp_rank, int dp_rank, int pp_rank) const;
  // Members of `rank`'s group of a kind, in group-rank order (member i has group rank i).
  std::vector<int> group(GroupKind kind, int of_rank) const;
  std::vector<int> group(GroupKind kind) const { return group(kind, rank); }
  int group_size(GroupKind kind) const;
  int group_rank(GroupKind kind) const;  // this rank's position in its group of that kind
  // Every group of a kind (each in group-rank order), ordered by their smallest member.
  std::vector<std::vector<int>> all_groups(GroupKind kind) const;

  // A one-line summary, then one line per group kind with the ranks of this rank's group:
  //   topology: 8 ranks = pp 1 x dp 4 x tp 2 (order tp-dp-pp); ep 2 x expert-dp 2; rank 0: tp 0, dp 0 (ep 0, expert-dp 0), pp 0
  //     tp        [0 1]        (4 groups of 2)
  std::string describe() const;
};

// parallel.ep must divide the routed experts of every MoE layer (moe.num_experts * moe.granularity),
// and ep > 1 needs an MoE model.
void check_expert_parallel(const ParallelConfig& parallel, const MoeConfig& moe);

// The parsed parallel.order: three distinct dimensions among tp, dp, pp, fastest first.
std::array<GroupKind, 3> parse_rank_order(const std::string& order);

// Every communicator a job uses besides the world, split from it in one place (collective over
// the world: every rank calls it, and nothing else splits the world). One per group kind, each
// with the world's backend and device and its rank the coordinate of that kind
// (dp->rank() == coords.dp, ep->rank() == coords.ep, ...), and the groups built on the layout:
struct ProcessGroups {
  std::unique_ptr<Communicator> dp, ep, expert_dp, tp, pp;
  // The ranks of this pipeline stage (dp x tp), in world-rank order: per-stage statistics.
  std::unique_ptr<Communicator> stage;
  // The ranks of this data-parallel replica (tp x pp), in world-rank order: the gradient norm
  // over the whole model.
  std::unique_ptr<Communicator> replica;
  // Tied embeddings under pipeline parallelism: the first and the last stage of this rank's
  // (tp, dp) position, which both hold the token table; null on other ranks and layouts.
  std::unique_ptr<Communicator> embed;
  Communicator& get(GroupKind kind) const;
};
// tied_embeddings: model.tie_embeddings (whether the embed group is built).
ProcessGroups make_process_groups(Communicator& world, const Topology& topology, bool tied_embeddings = false);

}  // namespace moe

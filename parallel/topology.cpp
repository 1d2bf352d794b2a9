// Topology: rank <-> (tp, dp, pp) coordinates in the configured order, the EP / expert-DP split
// of the data-parallel ranks, the layout description, and the group communicators (by split).
#include "parallel/topology.h"

#include <algorithm>
#include <sstream>

#include "src/config/moe_shape.h"
#include "src/util/check.h"

namespace moe {

namespace {

std::string ranks_str(const std::vector<int>& ranks) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < ranks.size(); ++i) out << (i ? " " : "") << ranks[i];
  out << "]";
  return out.str();
}

}  // namespace

const char* group_kind_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::tp: return "tp";
    case GroupKind::dp: return "dp";
    case GroupKind::ep: return "ep";
    case GroupKind::expert_dp: return "expert-dp";
    case GroupKind::pp: return "pp";
  }
  return "?";
}

std::array<GroupKind, 3> parse_rank_order(const std::string& order) {
  std::array<GroupKind, 3> out{};
  std::istringstream in(order);
  std::string part;
  int n = 0;
  bool seen[3] = {false, false, false};  // tp, dp, pp
  bool ok = true;
  while (std::getline(in, part, '-')) {
    int index = part == "tp" ? 0 : part == "dp" ? 1 : part == "pp" ? 2 : -1;
    if (index < 0 || n >= 3 || seen[index]) {
      ok = false;
      break;
    }
    seen[index] = true;
    out[static_cast<size_t>(n++)] = index == 0 ? GroupKind::tp : index == 1 ? GroupKind::dp : GroupKind::pp;
  }
  MOE_CHECK(ok && n == 3, "parallel.order = \"", order,
            "\" is not an order of tp, dp and pp (fastest-varying first, e.g. \"tp-dp-pp\")");
  return out;
}

Topology::Topology(const ParallelConfig& parallel, int world_size_in, int rank_in)
    : world_size(world_size_in), rank(rank_in) {
  MOE_CHECK(world_size >= 1, "world size ", world_size, " must be at least 1");
  MOE_CHECK(rank >= 0 && rank < world_size, "rank ", rank, " is outside the world of ", world_size, " ranks");
  MOE_CHECK(parallel.tp >= 1 && parallel.pp >= 1 && parallel.ep >= 1, "parallel.tp = ", parallel.tp,
            ", parallel.pp = ", parallel.pp, ", parallel.ep = ", parallel.ep, ": each must be at least 1");
  order = parse_rank_order(parallel.order);
  const int64_t model_ranks = parallel.tp * parallel.pp;
  MOE_CHECK(world_size % model_ranks == 0, "world size ", world_size, " is not divisible by parallel.tp * parallel.pp = ",
            model_ranks, " (parallel.tp = ", parallel.tp, ", parallel.pp = ", parallel.pp, ")");
  tp = static_cast<int>(parallel.tp);
  pp = static_cast<int>(parallel.pp);
  dp = world_size / static_cast<int>(model_ranks);
  MOE_CHECK(dp % parallel.ep == 0, "parallel.ep = ", parallel.ep, " does not divide the data-parallel size ", dp,
            " (world size ", world_size, " / (parallel.tp * parallel.pp = ", model_ranks,
            ")): expert-parallel groups are carved out of the data-parallel ranks");
  ep = static_cast<int>(parallel.ep);
  edp = dp / ep;
  coords = coords_of(rank);
}

Topology Topology::from_config(const Config& config, int world_size, int rank) {
  Topology t(config.parallel, world_size, rank);
  check_expert_parallel(config.parallel, config.moe);
  return t;
}

void check_expert_parallel(const ParallelConfig& parallel, const MoeConfig& moe) {
  if (parallel.ep == 1) return;
  MOE_CHECK(moe.num_experts > 0, "parallel.ep = ", parallel.ep,
            " needs an MoE model, but moe.num_experts = 0 (a dense model has no experts to spread)");
  const int64_t routed = moe_shape(moe).num_experts;
  MOE_CHECK(routed % parallel.ep == 0, "parallel.ep = ", parallel.ep, " does not divide the number of routed experts ",
            routed, " (moe.num_experts = ", moe.num_experts, " x moe.granularity = ", moe.granularity,
            "): each EP rank must own the same number of experts");
}

RankCoords Topology::coords_of(int r) const {
  MOE_CHECK(r >= 0 && r < world_size, "rank ", r, " is outside the world of ", world_size, " ranks");
  RankCoords c;
  int rest = r;
  for (GroupKind kind : order) {
    int size = kind == GroupKind::tp ? tp : kind == GroupKind::dp ? dp : pp;
    int value = rest % size;
    rest /= size;
    (kind == GroupKind::tp ? c.tp : kind == GroupKind::dp ? c.dp : c.pp) = value;
  }
  c.ep = c.dp % ep;
  c.edp = c.dp / ep;
  return c;
}

int Topology::rank_of(int tp_rank, int dp_rank, int pp_rank) const {
  MOE_CHECK(tp_rank >= 0 && tp_rank < tp && dp_rank >= 0 && dp_rank < dp && pp_rank >= 0 && pp_rank < pp,
            "coordinates (tp ", tp_rank, ", dp ", dp_rank, ", pp ", pp_rank, ") are outside tp ", tp, " x dp ", dp,
            " x pp ", pp);
  int r = 0, stride = 1;
  for (GroupKind kind : order) {
    int size = kind == GroupKind::tp ? tp : kind == GroupKind::dp ? dp : pp;
    int value = kind == GroupKind::tp ? tp_rank : kind == GroupKind::dp ? dp_rank : pp_rank;
    r += value * stride;
    stride *= size;
  }
  return r;
}

int Topology::group_size(GroupKind kind) const {
  switch (kind) {
    case GroupKind::tp: return tp;
    case GroupKind::dp: return dp;
    case GroupKind::ep: return ep;
    case GroupKind::expert_dp: return edp;
    case GroupKind::pp: return pp;
  }
  return 1;
}

int Topology::group_rank(GroupKind kind) const {
  switch (kind) {
    case GroupKind::tp: return coords.tp;
    case GroupKind::dp: return coords.dp;
    case GroupKind::ep: return coords.ep;
    case GroupKind::expert_dp: return coords.edp;
    case GroupKind::pp: return coords.pp;
  }
  return 0;
}

std::vector<int> Topology::group(GroupKind kind, int of_rank) const {
  const RankCoords c = coords_of(of_rank);
  std::vector<int> members;
  const int n = group_size(kind);
  for (int i = 0; i < n; ++i) {
    switch (kind) {
      case GroupKind::tp: members.push_back(rank_of(i, c.dp, c.pp)); break;
      case GroupKind::dp: members.push_back(rank_of(c.tp, i, c.pp)); break;
      case GroupKind::ep: members.push_back(rank_of(c.tp, c.edp * ep + i, c.pp)); break;
      case GroupKind::expert_dp: members.push_back(rank_of(c.tp, i * ep + c.ep, c.pp)); break;
      case GroupKind::pp: members.push_back(rank_of(c.tp, c.dp, i)); break;
    }
  }
  return members;
}

std::vector<std::vector<int>> Topology::all_groups(GroupKind kind) const {
  std::vector<std::vector<int>> groups;
  std::vector<bool> placed(static_cast<size_t>(world_size), false);
  for (int r = 0; r < world_size; ++r) {
    if (placed[static_cast<size_t>(r)]) continue;
    std::vector<int> g = group(kind, r);
    for (int m : g) placed[static_cast<size_t>(m)] = true;
    groups.push_back(std::move(g));
  }
  return groups;
}

std::string Topology::describe() const {
  std::ostringstream out;
  out << "topology: " << world_size << (world_size == 1 ? " rank" : " ranks") << " = pp " << pp << " x dp " << dp
      << " x tp " << tp << " (order " << group_kind_name(order[0]) << "-" << group_kind_name(order[1]) << "-"
      << group_kind_name(order[2]) << ", fastest first); dp " << dp << " = expert-dp " << edp << " x ep " << ep
      << "; rank " << rank << ": tp " << coords.tp << ", dp " << coords.dp << " (ep " << coords.ep << ", expert-dp "
      << coords.edp << "), pp " << coords.pp << "\n";
  for (GroupKind kind : {GroupKind::tp, GroupKind::dp, GroupKind::ep, GroupKind::expert_dp, GroupKind::pp}) {
    std::string name = group_kind_name(kind);
    std::string members = ranks_str(group(kind));
    const int size = group_size(kind);
    out << "  " << name << std::string(11 - name.size(), ' ') << members
        << std::string(members.size() < 24 ? 24 - members.size() : 1, ' ') << "(" << world_size / size
        << (world_size / size == 1 ? " group of " : " groups of ") << size << ")\n";
  }
  return out.str();
}

Communicator& ProcessGroups::get(GroupKind kind) const {
  const std::unique_ptr<Communicator>* c = nullptr;
  switch (kind) {
    case GroupKind::tp: c = &tp; break;
    case GroupKind::dp: c = &dp; break;
    case GroupKind::ep: c = &ep; break;
    case GroupKind::expert_dp: c = &expert_dp; break;
    case GroupKind::pp: c = &pp; break;
  }
  MOE_CHECK(c != nullptr && *c != nullptr, "the ", group_kind_name(kind), " communicator was not built");
  return **c;
}

ProcessGroups make_process_groups(Communicator& world, const Topology& t, bool tied_embeddings) {
  MOE_CHECK(world.size() == t.world_size && world.rank() == t.rank, "make_process_groups: the communicator has rank ",
            world.rank(), " of ", world.size(), " but the topology was built for rank ", t.rank, " of ", t.world_size);
  const RankCoords& c = t.coords;
  // Ranks that share every other coordinate form a group; the key orders them by their own one.
  ProcessGroups g;
  g.tp = world.split(c.dp + t.dp * c.pp, c.tp);
  g.dp = world.split(c.tp + t.tp * c.pp, c.dp);
  g.ep = world.split(c.tp + t.tp * (c.pp + t.pp * c.edp), c.ep);
  g.expert_dp = world.split(c.tp + t.tp * (c.pp + t.pp * c.ep), c.edp);
  g.pp = world.split(c.tp + t.tp * c.dp, c.pp);
  g.stage = world.split(c.pp, world.rank());
  g.replica = world.split(c.dp, world.rank());
  const bool end_stage = c.pp == 0 || c.pp == t.pp - 1;
  g.embed = world.split(tied_embeddings && t.pp > 1 && end_stage ? c.tp + t.tp * c.dp : -1, c.pp);
  for (GroupKind kind : {GroupKind::tp, GroupKind::dp, GroupKind::ep, GroupKind::expert_dp, GroupKind::pp}) {
    const Communicator& comm = g.get(kind);
    MOE_CHECK(comm.size() == t.group_size(kind) && comm.rank() == t.group_rank(kind), "the ", group_kind_name(kind),
              " communicator has rank ", comm.rank(), " of ", comm.size(), ", expected ", t.group_rank(kind), " of ",
              t.group_size(kind));
  }
  return g;
}

}  // namespace moe

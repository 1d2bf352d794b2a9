// Topology: rank coordinates and groups for 1, 2, 4 and 8 ranks in every rank order against hand
// tables, the errors that name the product that does not divide, and (under mpirun) the group
// communicators split from the world: their sizes, ranks and members (all-gathered world ranks).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/topology.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
using Groups = std::vector<std::vector<int>>;

ParallelConfig layout(int64_t tp, int64_t pp, int64_t ep, const std::string& order = "tp-dp-pp") {
  ParallelConfig p;
  p.tp = tp;
  p.pp = pp;
  p.ep = ep;
  p.order = order;
  return p;
}

// "tp dp pp" coordinates of every rank, in rank order.
std::vector<std::string> coord_table(const Topology& t) {
  std::vector<std::string> out;
  for (int r = 0; r < t.world_size; ++r) {
    RankCoords c = t.coords_of(r);
    out.push_back(std::to_string(c.tp) + " " + std::to_string(c.dp) + " " + std::to_string(c.pp));
  }
  return out;
}

const std::vector<std::string> k_orders = {"tp-dp-pp", "dp-tp-pp", "tp-pp-dp", "pp-tp-dp", "dp-pp-tp", "pp-dp-tp"};

// Every layout of n ranks: (tp, pp, ep) with tp * pp dividing n and ep dividing dp, in every order.
std::vector<ParallelConfig> all_layouts(int n) {
  std::vector<ParallelConfig> out;
  for (int tp = 1; tp <= n; ++tp) {
    for (int pp = 1; tp * pp <= n; ++pp) {
      if (n % (tp * pp) != 0) continue;
      const int dp = n / (tp * pp);
      for (int ep = 1; ep <= dp; ++ep) {
        if (dp % ep != 0) continue;
        for (const auto& order : k_orders) out.push_back(layout(tp, pp, ep, order));
      }
    }
  }
  return out;
}

// The world ranks of a communicator's members, in its rank order (all-gathered).
std::vector<int> members_of(Communicator& comm, const Communicator& world) {
  Tensor mine = Tensor::from_vector(std::vector<int32_t>{world.rank()}, {1}, DType::i32);
  Tensor all = Tensor::zeros({comm.size()}, DType::i32);
  comm.all_gather(mine, all);
  std::vector<int32_t> members = all.to_vector<int32_t>();
  return {members.begin(), members.end()};
}

}  // namespace

TEST_CASE("one rank: every coordinate 0, every group {0}", "[parallel][topology]") {
  for (const auto& order : k_orders) {
    Topology t(layout(1, 1, 1, order), 1, 0);
    REQUIRE(t.dp == 1);
    REQUIRE(t.edp == 1);
    REQUIRE(t.coords == RankCoords{});
    for (GroupKind kind : {GroupKind::tp, GroupKind::dp, GroupKind::ep, GroupKind::expert_dp, GroupKind::pp}) {
      REQUIRE(t.group(kind) == std::vector<int>{0});
      REQUIRE(t.all_groups(kind) == Groups{{0}});
    }
  }
}

TEST_CASE("two ranks: tp 2, pp 2, or dp 2 with ep 2", "[parallel][topology]") {
  Topology tp2(layout(2, 1, 1), 2, 1);
  REQUIRE(tp2.dp == 1);
  REQUIRE(tp2.coords == RankCoords{1, 0, 0, 0, 0});
  REQUIRE(tp2.all_groups(GroupKind::tp) == Groups{{0, 1}});
  REQUIRE(tp2.all_groups(GroupKind::dp) == Groups{{0}, {1}});

  Topology pp2(layout(1, 2, 1, "pp-dp-tp"), 2, 1);
  REQUIRE(pp2.coords == RankCoords{0, 0, 1, 0, 0});
  REQUIRE(pp2.all_groups(GroupKind::pp) == Groups{{0, 1}});

  Topology ep2(layout(1, 1, 2), 2, 1);
  REQUIRE(ep2.dp == 2);
  REQUIRE(ep2.edp == 1);
  REQUIRE(ep2.coords == RankCoords{0, 1, 0, 1, 0});
  REQUIRE(ep2.all_groups(GroupKind::dp) == Groups{{0, 1}});
  REQUIRE(ep2.all_groups(GroupKind::ep) == Groups{{0, 1}});
  REQUIRE(ep2.all_groups(GroupKind::expert_dp) == Groups{{0}, {1}});
}

TEST_CASE("four ranks: tp 2 x dp 2 and pp 2 x dp 2 in two orders each", "[parallel][topology]") {
  // tp-dp-pp: rank = tp + 2 dp
  Topology a(layout(2, 1, 1, "tp-dp-pp"), 4, 0);
  REQUIRE(coord_table(a) == std::vector<std::string>{"0 0 0", "1 0 0", "0 1 0", "1 1 0"});
  REQUIRE(a.all_groups(GroupKind::tp) == Groups{{0, 1}, {2, 3}});
  REQUIRE(a.all_groups(GroupKind::dp) == Groups{{0, 2}, {1, 3}});
  // dp-tp-pp: rank = dp + 2 tp
  Topology b(layout(2, 1, 2, "dp-tp-pp"), 4, 2);
  REQUIRE(coord_table(b) == std::vector<std::string>{"0 0 0", "0 1 0", "1 0 0", "1 1 0"});
  REQUIRE(b.all_groups(GroupKind::tp) == Groups{{0, 2}, {1, 3}});
  REQUIRE(b.all_groups(GroupKind::dp) == Groups{{0, 1}, {2, 3}});
  REQUIRE(b.all_groups(GroupKind::ep) == Groups{{0, 1}, {2, 3}});
  REQUIRE(b.all_groups(GroupKind::expert_dp) == Groups{{0}, {1}, {2}, {3}});
  REQUIRE(b.coords == RankCoords{1, 0, 0, 0, 0});
  // tp-dp-pp with pp 2: rank = dp + 2 pp
  Topology c(layout(1, 2, 1, "tp-dp-pp"), 4, 3);
  REQUIRE(coord_table(c) == std::vector<std::string>{"0 0 0", "0 1 0", "0 0 1", "0 1 1"});
  REQUIRE(c.all_groups(GroupKind::pp) == Groups{{0, 2}, {1, 3}});
  REQUIRE(c.all_groups(GroupKind::dp) == Groups{{0, 1}, {2, 3}});
  // pp-dp-tp: rank = pp + 2 dp
  Topology d(layout(1, 2, 1, "pp-dp-tp"), 4, 3);
  REQUIRE(coord_table(d) == std::vector<std::string>{"0 0 0", "0 0 1", "0 1 0", "0 1 1"});
  REQUIRE(d.all_groups(GroupKind::pp) == Groups{{0, 1}, {2, 3}});
  REQUIRE(d.all_groups(GroupKind::dp) == Groups{{0, 2}, {1, 3}});
  // dp 4, ep 2: EP groups are consecutive dp ranks, expert-DP joins equal ep ranks.
  Topology e(layout(1, 1, 2), 4, 3);
  REQUIRE(e.coords == RankCoords{0, 3, 0, 1, 1});
  REQUIRE(e.all_groups(GroupKind::ep) == Groups{{0, 1}, {2, 3}});
  REQUIRE(e.all_groups(GroupKind::expert_dp) == Groups{{0, 2}, {1, 3}});
}

TEST_CASE("eight ranks tp 2 x dp 2 x pp 2: coordinates in all six orders", "[parallel][topology]") {
  // Hand tables: "tp dp pp" of ranks 0..7, fastest-varying dimension first.
  const std::vector<std::vector<std::string>> expected = {
      {"0 0 0", "1 0 0", "0 1 0", "1 1 0", "0 0 1", "1 0 1", "0 1 1", "1 1 1"},  // tp-dp-pp
      {"0 0 0", "0 1 0", "1 0 0", "1 1 0", "0 0 1", "0 1 1", "1 0 1", "1 1 1"},  // dp-tp-pp
      {"0 0 0", "1 0 0", "0 0 1", "1 0 1", "0 1 0", "1 1 0", "0 1 1", "1 1 1"},  // tp-pp-dp
      {"0 0 0", "0 0 1", "1 0 0", "1 0 1", "0 1 0", "0 1 1", "1 1 0", "1 1 1"},  // pp-tp-dp
      {"0 0 0", "0 1 0", "0 0 1", "0 1 1", "1 0 0", "1 1 0", "1 0 1", "1 1 1"},  // dp-pp-tp
      {"0 0 0", "0 0 1", "0 1 0", "0 1 1", "1 0 0", "1 0 1", "1 1 0", "1 1 1"},  // pp-dp-tp
  };
  for (size_t i = 0; i < k_orders.size(); ++i) {
    INFO("order " << k_orders[i]);
    Topology t(layout(2, 2, 1, k_orders[i]), 8, 5);
    REQUIRE(coord_table(t) == expected[i]);
    for (int r = 0; r < 8; ++r) {
      RankCoords c = t.coords_of(r);
      REQUIRE(t.rank_of(c.tp, c.dp, c.pp) == r);
    }
  }
  // Groups of one order by hand: dp-pp-tp, rank = dp + 2 pp + 4 tp.
  Topology t(layout(2, 2, 1, "dp-pp-tp"), 8, 6);
  REQUIRE(t.all_groups(GroupKind::tp) == Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  REQUIRE(t.all_groups(GroupKind::dp) == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  REQUIRE(t.all_groups(GroupKind::pp) == Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  REQUIRE(t.group(GroupKind::tp) == std::vector<int>{2, 6});
  REQUIRE(t.group(GroupKind::dp) == std::vector<int>{6, 7});
  REQUIRE(t.group(GroupKind::pp) == std::vector<int>{4, 6});
  REQUIRE(t.coords == RankCoords{1, 0, 1, 0, 0});
}

TEST_CASE("eight ranks tp 2 x dp 4 with ep 2; tp 4 x pp 2; dp 8 with ep 4", "[parallel][topology]") {
  // tp-dp-pp: rank = tp + 2 dp; EP pairs of dp ranks {0,1}, {2,3}; expert-DP {0,2}, {1,3}.
  Topology a(layout(2, 1, 2), 8, 6);
  REQUIRE(a.dp == 4);
  REQUIRE(a.edp == 2);
  REQUIRE(a.coords == RankCoords{0, 3, 0, 1, 1});
  REQUIRE(a.all_groups(GroupKind::dp) == Groups{{0, 2, 4, 6}, {1, 3, 5, 7}});
  REQUIRE(a.all_groups(GroupKind::ep) == Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  REQUIRE(a.all_groups(GroupKind::expert_dp) == Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  REQUIRE(a.group(GroupKind::ep) == std::vector<int>{4, 6});
  REQUIRE(a.group(GroupKind::expert_dp) == std::vector<int>{2, 6});
  REQUIRE(a.group(GroupKind::tp) == std::vector<int>{6, 7});

  // pp-tp-dp with tp 4, pp 2, dp 1: rank = pp + 2 tp.
  Topology b(layout(4, 2, 1, "pp-tp-dp"), 8, 5);
  REQUIRE(b.dp == 1);
  REQUIRE(b.coords == RankCoords{2, 0, 1, 0, 0});
  REQUIRE(b.all_groups(GroupKind::tp) == Groups{{0, 2, 4, 6}, {1, 3, 5, 7}});
  REQUIRE(b.all_groups(GroupKind::pp) == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  REQUIRE(b.group(GroupKind::dp) == std::vector<int>{5});

  Topology c(layout(1, 1, 4), 8, 6);
  REQUIRE(c.coords == RankCoords{0, 6, 0, 2, 1});
  REQUIRE(c.all_groups(GroupKind::ep) == Groups{{0, 1, 2, 3}, {4, 5, 6, 7}});
  REQUIRE(c.all_groups(GroupKind::expert_dp) == Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
}

TEST_CASE("every layout of 1 to 12 ranks: groups partition the world consistently", "[parallel][topology]") {
  for (int world = 1; world <= 12; ++world) {
    for (int tp = 1; tp <= world; ++tp) {
      for (int pp = 1; tp * pp <= world; ++pp) {
        if (world % (tp * pp) != 0) continue;
        const int dp = world / (tp * pp);
        for (int ep = 1; ep <= dp; ++ep) {
          if (dp % ep != 0) continue;
          for (const auto& order : k_orders) {
            INFO("world " << world << " tp " << tp << " pp " << pp << " ep " << ep << " " << order);
            for (int r = 0; r < world; ++r) {
              Topology t(layout(tp, pp, ep, order), world, r);
              for (GroupKind kind : {GroupKind::tp, GroupKind::dp, GroupKind::ep, GroupKind::expert_dp, GroupKind::pp}) {
                std::vector<int> g = t.group(kind);
                REQUIRE(static_cast<int>(g.size()) == t.group_size(kind));
                REQUIRE(g[static_cast<size_t>(t.group_rank(kind))] == r);
                for (int m : g) REQUIRE(t.group(kind, m) == g);  // every member sees the same group
              }
              // An EP group and an expert-DP group meet in exactly this rank, inside its dp group.
              REQUIRE(t.group_size(GroupKind::ep) * t.group_size(GroupKind::expert_dp) == t.dp);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("describe prints the summary and one line per group kind", "[parallel][topology]") {
  Topology t(layout(2, 1, 2), 8, 6);
  std::string text = t.describe();
  REQUIRE_THAT(text, Contains("topology: 8 ranks = pp 1 x dp 4 x tp 2 (order tp-dp-pp, fastest first); "
                              "dp 4 = expert-dp 2 x ep 2; rank 6: tp 0, dp 3 (ep 1, expert-dp 1), pp 0\n"));
  REQUIRE_THAT(text, Contains("  tp         [6 7]"));
  REQUIRE_THAT(text, Contains("(4 groups of 2)"));
  REQUIRE_THAT(text, Contains("  dp         [0 2 4 6]"));
  REQUIRE_THAT(text, Contains("  ep         [4 6]"));
  REQUIRE_THAT(text, Contains("  expert-dp  [2 6]"));
  REQUIRE_THAT(text, Contains("  pp         [6]"));
  REQUIRE_THAT(text, Contains("(8 groups of 1)"));
}

TEST_CASE("impossible layouts name the product that does not divide", "[parallel][topology]") {
  REQUIRE_THROWS_WITH(Topology(layout(2, 2, 1), 6, 0), Contains("world size 6 is not divisible by parallel.tp * parallel.pp = 4"));
  REQUIRE_THROWS_WITH(Topology(layout(1, 1, 3), 4, 0), Contains("parallel.ep = 3 does not divide the data-parallel size 4"));
  REQUIRE_THROWS_WITH(Topology(layout(2, 1, 3), 8, 0), Contains("parallel.ep = 3 does not divide the data-parallel size 4"));
  REQUIRE_THROWS_WITH(Topology(layout(1, 1, 1, "tp-tp-pp"), 1, 0),
                      Contains("parallel.order = \"tp-tp-pp\" is not an order of tp, dp and pp"));
  REQUIRE_THROWS_WITH(Topology(layout(1, 1, 1, "tp-dp"), 1, 0), Contains("is not an order of tp, dp and pp"));
  REQUIRE_THROWS_WITH(Topology(layout(1, 1, 1), 4, 4), Contains("rank 4 is outside the world of 4 ranks"));
  REQUIRE_THROWS_WITH(Topology(layout(1, 1, 1), 0, 0), Contains("world size 0 must be at least 1"));

  MoeConfig moe;
  moe.num_experts = 6;
  REQUIRE_THROWS_WITH(check_expert_parallel(layout(1, 1, 4), moe),
                      Contains("parallel.ep = 4 does not divide the number of routed experts 6"));
  moe.granularity = 2;  // 12 routed experts: 4 divides them
  REQUIRE_NOTHROW(check_expert_parallel(layout(1, 1, 4), moe));
  moe.num_experts = 0;
  REQUIRE_THROWS_WITH(check_expert_parallel(layout(1, 1, 2), moe), Contains("parallel.ep = 2 needs an MoE model"));

  Config config;
  config.moe.num_experts = 6;
  config.parallel.ep = 4;
  REQUIRE_THROWS_WITH(Topology::from_config(config, 8, 0), Contains("does not divide the number of routed experts 6"));
  config.parallel.ep = 2;
  REQUIRE(Topology::from_config(config, 8, 0).edp == 4);
}

// Under mpirun: every layout of this world size (every order), the communicators split from the
// world have the topology's sizes and ranks, and all-gathering world ranks over each gives its
// members in group-rank order.
TEST_CASE("process groups split from the world have the topology's members", "[parallel][topology][mpi]") {
  auto world = make_world_communicator(Device::cpu());
  const int n = world->size();
  int layouts = 0;
  for (const ParallelConfig& p : all_layouts(n)) {
    INFO("world " << n << " tp " << p.tp << " pp " << p.pp << " ep " << p.ep << " " << p.order);
    Topology t(p, n, world->rank());
    ProcessGroups groups = make_process_groups(*world, t);
    for (GroupKind kind : {GroupKind::tp, GroupKind::dp, GroupKind::ep, GroupKind::expert_dp, GroupKind::pp}) {
      INFO("group " << group_kind_name(kind));
      Communicator& comm = groups.get(kind);
      REQUIRE(comm.size() == t.group_size(kind));
      REQUIRE(comm.rank() == t.group_rank(kind));
      REQUIRE(members_of(comm, *world) == t.group(kind));
    }
    ++layouts;
  }
  REQUIRE(layouts >= 6);
  // (tp, pp, ep) of 4 ranks: (1,1,1|2|4) (1,2,1|2) (1,4,1) (2,1,1|2) (2,2,1) (4,1,1): 10, six orders each.
  if (n == 4) REQUIRE(layouts == 6 * 10);
  REQUIRE_THROWS_WITH(make_process_groups(*world, Topology(layout(1, 1, 1), n + 1, 0)),
                      Contains("make_process_groups: the communicator has rank"));
}

// The groups built on the layout: a stage's ranks and a replica's ranks in world-rank order, and
// the tied-embedding group (first and last stage of one (tp, dp) position) only where asked for.
TEST_CASE("process groups: the stage, replica and tied-embedding groups have their members",
          "[parallel][topology][mpi]") {
  auto world = make_world_communicator(Device::cpu());
  const int n = world->size();
  int layouts = 0;
  for (const ParallelConfig& p : all_layouts(n)) {
    for (bool tied : {false, true}) {
      INFO("world " << n << " tp " << p.tp << " pp " << p.pp << " ep " << p.ep << " " << p.order << " tied " << tied);
      Topology t(p, n, world->rank());
      ProcessGroups groups = make_process_groups(*world, t, tied);
      const RankCoords me = t.coords;
      std::vector<int> stage, replica, embed;
      for (int r = 0; r < n; ++r) {
        const RankCoords c = t.coords_of(r);
        if (c.pp == me.pp) stage.push_back(r);
        if (c.dp == me.dp) replica.push_back(r);
      }
      const bool end_stage = me.pp == 0 || me.pp == t.pp - 1;
      if (tied && t.pp > 1 && end_stage) embed = {t.rank_of(me.tp, me.dp, 0), t.rank_of(me.tp, me.dp, t.pp - 1)};
      REQUIRE(members_of(*groups.stage, *world) == stage);
      REQUIRE(members_of(*groups.replica, *world) == replica);
      REQUIRE(static_cast<bool>(groups.embed) == !embed.empty());
      if (groups.embed) REQUIRE(members_of(*groups.embed, *world) == embed);
      ++layouts;
    }
  }
  // The 10 (tp, pp, ep) layouts of 4 ranks (see above), six orders each, tied or not.
  if (n == 4) REQUIRE(layouts == 6 * 10 * 2);
}

}  // namespace moe

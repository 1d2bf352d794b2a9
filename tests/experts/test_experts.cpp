// The Experts interface through its registry: name resolution and the moe.experts_impl error,
// the loop reference against one FFN per expert, every registered implementation against the
// loop (alone and inside the MoE layer), and the two forms of the per-expert row split.
#include <catch2/catch.hpp>

#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "experts/experts_registry.h"
#include "experts/moe_layer.h"
#include "routing/router_registry.h"
#include "src/config/config.h"
#include "src/nn/dense_ffn.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

constexpr int64_t k_experts = 6, k_first = 2, k_local = 3, k_d = 5, k_d_expert = 4;
constexpr double k_init_std = 0.5;
const std::vector<int64_t> k_counts = {3, 0, 4};  // local expert 1 gets no rows
constexpr int64_t k_rows = 7;

ExpertsSpec spec(ops::Activation act) {
  return {k_experts, k_first, k_local, k_d, k_d_expert, act, k_init_std, k_init_std};
}

Tensor offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int32_t> ends{0};
  for (int64_t c : counts) ends.push_back(static_cast<int32_t>(ends.back() + c));
  return Tensor::from_vector(ends, {static_cast<int64_t>(ends.size())}, DType::i32);
}

// One implementation on its own store (the same seed gives every store the same weights).
struct Built {
  ParamStore store;
  std::unique_ptr<Experts> experts;
};

std::unique_ptr<Built> build(const std::string& impl, ops::Activation act) {
  auto b = std::make_unique<Built>();
  b->experts = make_experts(impl, b->store, "experts", spec(act));
  b->store.allocate(Device::cpu(), DType::f64);
  b->store.initialize(41);
  return b;
}

struct Run {
  std::vector<double> y, dx, dw_up, dw_down;
};

Run run(Built& b, const Tensor& x, const Tensor& dy, const ExpertRows& rows) {
  b.store.zero_grads();
  ExpertsSaved saved;
  Run r;
  r.y = b.experts->forward(x, rows, saved).to_vector<double>();
  r.dx = b.experts->backward(saved, dy).to_vector<double>();
  r.dw_up = b.store.grad(b.store.find("experts.w_up")).to_vector<double>();
  r.dw_down = b.store.grad(b.store.find("experts.w_down")).to_vector<double>();
  return r;
}

}  // namespace

TEST_CASE("the experts registry resolves names, auto and unknown values", "[experts][registry]") {
  const auto& kinds = experts_kinds();
  REQUIRE(!kinds.empty());
  REQUIRE(std::string(kinds.front().name) == "loop");  // the reference stays registered
  const ExpertsKind& chosen = experts_kind("auto");
  REQUIRE(chosen.auto_rank > 0);
  std::string names = "auto";
  for (const ExpertsKind& kind : kinds) {
    INFO("kind " << kind.name);
    names += std::string(", ") + kind.name;
    REQUIRE(&experts_kind(kind.name) == &kind);
    REQUIRE(kind.auto_rank <= chosen.auto_rank);
    REQUIRE(std::string(kind.summary).size() > 0);
    // Every implementation registers the same canonical weights: row shards of the local experts.
    ParamStore store;
    auto experts = make_experts(kind.name, store, "layers.1.moe.experts", spec(ops::Activation::swiglu));
    REQUIRE(std::string(experts->name()) == kind.name);
    REQUIRE(experts->num_local_experts() == k_local);
    REQUIRE(store.infos().size() == 2u);
    const ParamInfo& up = store.info(store.find("layers.1.moe.experts.w_up"));
    const ParamInfo& down = store.info(store.find("layers.1.moe.experts.w_down"));
    REQUIRE(up.full_shape == Shape{k_experts, k_d, 2 * k_d_expert});
    REQUIRE(up.shape == Shape{k_local, k_d, 2 * k_d_expert});
    REQUIRE(down.full_shape == Shape{k_experts, k_d_expert, k_d});
    REQUIRE(up.group == ParamGroup::expert);
    REQUIRE(up.split_over == SplitOver::ep);
  }
  ParamStore store;
  REQUIRE_THROWS_WITH(make_experts("grouped_gemm_typo", store, "experts", spec(ops::Activation::gelu)),
                      Contains("moe.experts_impl = 'grouped_gemm_typo' is not one of: " + names));
  REQUIRE_THROWS_WITH(make_experts("", store, "experts", spec(ops::Activation::gelu)),
                      Contains("moe.experts_impl = '' is not one of"));
  ExpertsSpec outside = spec(ops::Activation::gelu);
  outside.first_expert = 4;  // [4, 7) of 6
  REQUIRE_THROWS_WITH(make_experts("loop", store, "experts", outside),
                      Contains("experts 'experts': local experts [4, 7) are not within the 6 experts"));
}

TEST_CASE("moe.experts_impl defaults to auto and parses", "[experts][registry][config]") {
  REQUIRE(MoeConfig{}.experts_impl == "auto");
  REQUIRE(MoeLayerConfig{}.experts_impl == "auto");
  Config c = parse_config("[moe]\nexperts_impl = \"loop\"\n", "x.toml");
  REQUIRE(c.moe.experts_impl == "loop");
  REQUIRE_NOTHROW(validate_config(c));
}

TEST_CASE("the loop reference is one FFN per local expert over its rows", "[experts][loop]") {
  auto act = GENERATE(ops::Activation::swiglu, ops::Activation::relu);
  INFO("activation " << ops::activation_name(act));
  auto b = build("loop", act);
  Tensor x = test::random_tensor({k_rows, k_d}, DType::f64, 42, Device::cpu(), -2.0, 2.0);
  Tensor dy = test::random_tensor({k_rows, k_d}, DType::f64, 43);
  const Run got = run(*b, x, dy, ExpertRows::from_counts(k_counts));

  // By hand: local expert e is slice e of this rank's weights (global expert k_first + e).
  Tensor w_up = b->store.param(b->store.find("experts.w_up"));
  Tensor w_down = b->store.param(b->store.find("experts.w_down"));
  std::vector<double> y(static_cast<size_t>(k_rows * k_d), 0.0), dx(y.size(), 0.0);
  std::vector<double> dw_up(static_cast<size_t>(w_up.numel()), 0.0), dw_down(static_cast<size_t>(w_down.numel()), 0.0);
  int64_t begin = 0;
  for (int64_t e = 0; e < k_local; ++e) {
    const int64_t end = begin + k_counts[static_cast<size_t>(e)];
    if (end == begin) continue;
    Tensor up = w_up.rows(e, e + 1).view({w_up.size(1), w_up.size(2)}).clone();
    Tensor down = w_down.rows(e, e + 1).view({w_down.size(1), w_down.size(2)}).clone();
    FfnSaved s;
    auto ye = ffn_forward(x.rows(begin, end).clone(), up, down, act, s).to_vector<double>();
    std::copy(ye.begin(), ye.end(), y.begin() + begin * k_d);
    Tensor d_up = Tensor::zeros(up.shape(), DType::f64), d_down = Tensor::zeros(down.shape(), DType::f64);
    Tensor dxe = Tensor::empty({end - begin, k_d}, DType::f64);
    ffn_backward(s, up, down, act, dy.rows(begin, end).clone(), d_up, d_down, dxe);
    auto dxv = dxe.to_vector<double>(), du = d_up.to_vector<double>(), dd = d_down.to_vector<double>();
    std::copy(dxv.begin(), dxv.end(), dx.begin() + begin * k_d);
    std::copy(du.begin(), du.end(), dw_up.begin() + e * up.numel());
    std::copy(dd.begin(), dd.end(), dw_down.begin() + e * down.numel());
    begin = end;
  }
  test::require_close(got.y, y, 1e-14, 1e-14, "y_sorted");
  test::require_close(got.dx, dx, 1e-14, 1e-14, "dx_sorted");
  test::require_close(got.dw_up, dw_up, 1e-14, 1e-14, "dw_up");
  test::require_close(got.dw_down, dw_down, 1e-14, 1e-14, "dw_down");
  REQUIRE(test::max_abs(got.dw_up) > 1e-3);
}

TEST_CASE("every registered implementation matches the loop reference, given counts, offsets or both",
          "[experts][registry][loop]") {
  auto kind = GENERATE(range(size_t{0}, experts_kinds().size()));
  auto act = GENERATE(ops::Activation::swiglu, ops::Activation::gelu);
  auto form = GENERATE(0, 1, 2);  // host counts, device offsets, both
  const char* impl = experts_kinds()[kind].name;
  INFO("experts_impl " << impl << " activation " << ops::activation_name(act) << " rows form " << form);
  ExpertRows rows;
  if (form != 1) rows.counts = k_counts;
  if (form != 0) rows.offsets = offsets_of(k_counts);
  REQUIRE(rows.num_experts() == k_local);
  REQUIRE(rows.host_counts() == k_counts);
  REQUIRE(rows.device_offsets(Device::cpu()).to_vector<int32_t>() == offsets_of(k_counts).to_vector<int32_t>());

  Tensor x = test::random_tensor({k_rows, k_d}, DType::f64, 52, Device::cpu(), -2.0, 2.0);
  Tensor dy = test::random_tensor({k_rows, k_d}, DType::f64, 53);
  auto ref = build("loop", act), got = build(impl, act);
  const Run r = run(*ref, x, dy, ExpertRows::from_counts(k_counts)), g = run(*got, x, dy, rows);
  test::require_close(g.y, r.y, 1e-12, 1e-12, "y_sorted");
  test::require_close(g.dx, r.dx, 1e-12, 1e-12, "dx_sorted");
  test::require_close(g.dw_up, r.dw_up, 1e-12, 1e-12, "dw_up");
  test::require_close(g.dw_down, r.dw_down, 1e-12, 1e-12, "dw_down");
}

TEST_CASE("every implementation's weight gradients start from zero each step and add over backwards",
          "[experts][registry][grads]") {
  auto kind = GENERATE(range(size_t{0}, experts_kinds().size()));
  const char* impl = experts_kinds()[kind].name;
  INFO("experts_impl " << impl);
  Tensor x = test::random_tensor({k_rows, k_d}, DType::f64, 56, Device::cpu(), -2.0, 2.0);
  Tensor dy = test::random_tensor({k_rows, k_d}, DType::f64, 57);
  const ExpertRows rows = ExpertRows::from_counts(k_counts);
  auto fresh = build(impl, ops::Activation::swiglu);
  const Run once = run(*fresh, x, dy, rows);
  // Stale gradients from an earlier step (the grouped experts' weight GEMMs store over them
  // instead of zeroing and adding): the step's gradients are the same.
  auto stale = build(impl, ops::Activation::swiglu);
  Tensor& flat = stale->store.flat_grads(ParamGroup::expert);
  flat.copy_from(Tensor::from_vector(std::vector<double>(static_cast<size_t>(flat.numel()), 7.0), flat.shape(),
                                     DType::f64));
  const Run again = run(*stale, x, dy, rows);
  test::require_close(again.dw_up, once.dw_up, 0, 0, "dw_up over stale values");
  test::require_close(again.dw_down, once.dw_down, 0, 0, "dw_down over stale values");
  // A second micro-batch of the same step adds to the first.
  ExpertsSaved saved;
  stale->experts->forward(x, rows, saved);
  stale->experts->backward(saved, dy);
  std::vector<double> twice_up = once.dw_up, twice_down = once.dw_down;
  for (double& v : twice_up) v *= 2;
  for (double& v : twice_down) v *= 2;
  test::require_close(stale->store.grad(stale->store.find("experts.w_up")).to_vector<double>(), twice_up, 1e-14,
                      1e-14, "dw_up of two backwards");
  test::require_close(stale->store.grad(stale->store.find("experts.w_down")).to_vector<double>(), twice_down,
                      1e-14, 1e-14, "dw_down of two backwards");
  // A step whose backward has no rows at all (an expert-parallel rank that received none) writes
  // no gradient: the stale values still read as zeros.
  auto idle = build(impl, ops::Activation::swiglu);
  Tensor& idle_flat = idle->store.flat_grads(ParamGroup::expert);
  idle_flat.copy_from(Tensor::from_vector(std::vector<double>(static_cast<size_t>(idle_flat.numel()), 7.0),
                                          idle_flat.shape(), DType::f64));
  const Run none = run(*idle, Tensor::zeros({0, k_d}, DType::f64), Tensor::zeros({0, k_d}, DType::f64),
                       ExpertRows::from_counts({0, 0, 0}));
  REQUIRE(none.dw_up == std::vector<double>(once.dw_up.size(), 0.0));
  REQUIRE(none.dw_down == std::vector<double>(once.dw_down.size(), 0.0));
}

TEST_CASE("bad row splits and a backward without its forward have their messages", "[experts][loop][errors]") {
  auto b = build("loop", ops::Activation::gelu);
  Tensor x = test::random_tensor({k_rows, k_d}, DType::f64, 62);
  ExpertsSaved saved;
  REQUIRE_THROWS_WITH(b->experts->forward(x, ExpertRows::from_counts({3, 4}), saved),
                      Contains("experts (loop): 2 counts for 3 experts"));
  REQUIRE_THROWS_WITH(b->experts->forward(x, ExpertRows::from_counts({3, 2, 3}), saved),
                      Contains("expert counts sum to 8 but only 7 rows were given"));
  REQUIRE_THROWS_WITH(ExpertRows::from_offsets(Tensor::from_vector(std::vector<int64_t>{0, 7}, {2}, DType::i64)),
                      Contains("offsets must be i32[L+1]"));
  REQUIRE_THROWS_WITH(ExpertRows::from_offsets(Tensor::from_vector(std::vector<int32_t>{1, 4, 4, 7}, {4}, DType::i32))
                          .host_counts(),
                      Contains("offsets[0] is 1, not 0"));
  REQUIRE_THROWS_WITH(ExpertRows::from_offsets(Tensor::from_vector(std::vector<int32_t>{0, 4, 3, 7}, {4}, DType::i32))
                          .host_counts(),
                      Contains("offsets decrease at expert 1 (4 then 3)"));
  REQUIRE_THROWS_WITH(ExpertRows::from_counts({3, -1, 4}).device_offsets(Device::cpu()), Contains("negative count -1"));
  REQUIRE_THROWS_WITH(b->experts->backward(ExpertsSaved{}, x),
                      Contains("experts 'loop': backward was given no forward state of this implementation"));
  // The grouped experts read their input rows in backward: dropped and not given again, a message.
  auto g = build("grouped", ops::Activation::gelu);
  ExpertsSaved grouped;
  g->experts->forward(x, ExpertRows::from_counts(k_counts), grouped);
  REQUIRE(grouped.input.defined());
  grouped.input = Tensor();
  REQUIRE_THROWS_WITH(g->experts->backward(grouped, x), Contains("backward needs forward's input rows (7)"));
}

TEST_CASE("the MoE layer runs the configured experts implementation", "[experts][moe][registry]") {
  auto build_layer = [](const std::string& impl, ParamStore& store) {
    MoeConfig mc;
    mc.num_experts = 4;
    mc.top_k = 2;
    MoeLayerConfig c;
    c.d_model = k_d;
    c.num_experts = 4;
    c.d_expert = k_d_expert;
    c.activation = ops::Activation::swiglu;
    c.init_std = c.out_init_std = k_init_std;
    c.balancing.switch_coef = 0.1;
    c.experts_impl = impl;
    RouterSpec rs{k_d, 11, 4, 2, 0, k_init_std};
    auto layer = std::make_unique<MoeLayer>(store, "moe", c, make_router(store, "moe.router", mc, rs));
    store.allocate(Device::cpu(), DType::f64);
    store.initialize(71);
    return layer;
  };
  const int64_t tokens = 9;
  const std::vector<int32_t> ids = test::random_ids(tokens, 11, 72).to_vector<int32_t>();
  const RouteInputs inputs{&ids, nullptr, 3, true, 0};
  Tensor x = test::random_tensor({tokens, k_d}, DType::f64, 73, Device::cpu(), -2.0, 2.0);
  Tensor dy = test::random_tensor({tokens, k_d}, DType::f64, 74);

  ParamStore ref_store;
  auto ref = build_layer("loop", ref_store);
  REQUIRE(std::string(ref->experts().name()) == "loop");
  MoeLayerSaved ref_saved;
  const auto y_ref = ref->forward(x, inputs, ref_saved).to_vector<double>();
  const auto dx_ref = ref->backward(ref_saved, dy, 1.0f).to_vector<double>();
  for (const std::string impl : {"auto", "loop", "grouped"}) {
    INFO("experts_impl " << impl);
    ParamStore store;
    auto layer = build_layer(impl, store);
    REQUIRE(std::string(layer->experts().name()) == experts_kind(impl).name);
    MoeLayerSaved saved;
    test::require_close(layer->forward(x, inputs, saved).to_vector<double>(), y_ref, 1e-12, 1e-12, "y");
    // The grouped experts' input rows are not kept: the layer keeps x and dispatches it again in
    // backward (the loop keeps views of its own).
    const bool grouped = std::string(layer->experts().name()) == "grouped";
    REQUIRE(saved.experts.input.defined() == false);
    REQUIRE(saved.routed_input.defined() == grouped);
    test::require_close(layer->backward(saved, dy, 1.0f).to_vector<double>(), dx_ref, 1e-12, 1e-12, "dx");
    for (const char* name : {"moe.experts.w_up", "moe.experts.w_down", "moe.router.weight"}) {
      test::require_close(store.grad(store.find(name)).to_vector<double>(),
                          ref_store.grad(ref_store.find(name)).to_vector<double>(), 1e-12, 1e-12, name);
    }
  }
  ParamStore bad;
  REQUIRE_THROWS_WITH(build_layer("fast", bad), Contains("moe.experts_impl = 'fast' is not one of: auto"));
}

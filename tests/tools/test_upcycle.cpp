// Upcycling dense checkpoints into MoE models: copy reproduces the dense logits, fine-grained
// virtual groups reproduce them (relu, renormalised, k a multiple of G) with exactly scaled
// segments, partial re-init redraws the asked fraction reproducibly; the output loads into the
// target model and `moe train` resumes it; bad input fails with one line naming the problem.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "src/tools/upcycle.h"
#include "src/train/checkpoint.h"
#include "src/train/optimizer.h"
#include "tests/test_util.h"
#include "tests/train/train_test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

constexpr uint64_t k_dense_seed = 7, k_upcycle_seed = 99;

// A tiny dense model: 3 layers, d = 16, d_ff = 32.
Config dense_config(const std::string& activation) {
  Config c;
  c.model.vocab_size = 32;
  c.model.d_model = 16;
  c.model.num_layers = 3;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 8;
  c.model.d_ff = 32;
  c.model.activation = activation;
  c.moe.num_experts = 0;
  c.train.device = "cpu";
  validate_config(c);
  return c;
}

// The MoE target: the dense [model] with MoE layers 1 and 2 (layer 0 stays dense).
Config moe_config(const Config& dense, int64_t experts, int64_t top_k, int64_t d_expert) {
  Config c = dense;
  c.moe.num_experts = experts;
  c.moe.top_k = top_k;
  c.moe.d_expert = d_expert;
  c.moe.first_dense = 1;
  c.moe.router = "softmax_topk";
  c.moe.renormalize = true;
  validate_config(c);
  return c;
}

std::unique_ptr<Model> build_model(const Config& c) {
  auto m = std::make_unique<Model>(c.model, c.moe);
  m->allocate(Device::cpu(), DType::f32);
  return m;
}

// A dense model as after some training: initialised, then every parameter (norm gains too)
// moved off its initial value, written as a checkpoint of this engine.
std::unique_ptr<Model> write_dense_checkpoint(const Config& c, const std::string& dir) {
  auto m = build_model(c);
  m->initialize(k_dense_seed);
  ParamStore& store = m->params();
  std::mt19937_64 rng(5);
  std::normal_distribution<double> noise(0.0, 0.01);
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    std::vector<float> v = store.master(id).to_vector<float>();
    for (auto& x : v) x += static_cast<float>(noise(rng));
    store.load_master_from_host(id, Tensor::from_vector(v, store.info(id).shape, DType::f32));
  }
  AdamW optimizer(store, c.optim);
  write_checkpoint(dir, store, optimizer, TrainerState{4, c.train.seed, 1}, c);
  return m;
}

std::unique_ptr<Model> load_upcycled(const Config& target, const std::string& dir) {
  auto m = build_model(target);
  read_checkpoint(dir, m->params(), nullptr);
  return m;
}

std::vector<float> values(const Model& m, const std::string& name) {
  return m.params().master(m.params().find(name)).to_vector<float>();
}

// Logits of a fixed batch of 4 random sequences.
std::vector<double> logits_of(const Model& m) {
  const int64_t batch = 4, seq = m.config().seq_len;
  std::vector<int32_t> tokens = test::random_ids(batch * seq, m.config().vocab_size, 17).to_vector<int32_t>();
  return m.logits(tokens, batch).to_vector<double>();
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

UpcycleOptions options(UpcycleMode mode, double fraction = 0.5, uint64_t seed = k_upcycle_seed) {
  return UpcycleOptions{mode, fraction, seed};
}

// The dense FFN of a layer with accessors by hidden unit.
struct DenseFfn {
  std::vector<float> up, down;
  int64_t d = 0, f = 0;
  bool gated = false;
  float gate(int64_t r, int64_t j) const { return up[r * (gated ? 2 * f : f) + j]; }
  float upv(int64_t r, int64_t j) const { return up[r * 2 * f + f + j]; }
  float downv(int64_t j, int64_t c) const { return down[j * d + c]; }
};

DenseFfn dense_ffn(const Model& dense, int64_t layer) {
  DenseFfn f;
  f.up = values(dense, "layers." + std::to_string(layer) + ".ffn.w_up");
  f.down = values(dense, "layers." + std::to_string(layer) + ".ffn.w_down");
  f.d = dense.config().d_model;
  f.f = dense.config().d_ff;
  f.gated = ops::is_gated(ops::activation_from_name(dense.config().activation));
  return f;
}

// Expert e of a layer: w_up[d, W] and w_down[f_e, d] values.
struct Expert {
  std::vector<float> up, down;
  int64_t width = 0, f_e = 0;
  float gate(int64_t r, int64_t u) const { return up[r * width + u]; }
  float upv(int64_t r, int64_t u) const { return up[r * width + f_e + u]; }
};

Expert expert_of(const Model& m, int64_t layer, int64_t e) {
  const std::string prefix = "layers." + std::to_string(layer) + ".moe.experts.";
  const Shape up_shape = m.params().info(m.params().find(prefix + "w_up")).shape;
  const Shape down_shape = m.params().info(m.params().find(prefix + "w_down")).shape;
  std::vector<float> up = values(m, prefix + "w_up"), down = values(m, prefix + "w_down");
  Expert x;
  x.width = up_shape[2];
  x.f_e = down_shape[1];
  const int64_t up_n = up_shape[1] * up_shape[2], down_n = down_shape[1] * down_shape[2];
  x.up.assign(up.begin() + e * up_n, up.begin() + (e + 1) * up_n);
  x.down.assign(down.begin() + e * down_n, down.begin() + (e + 1) * down_n);
  return x;
}

// The router weight a freshly initialised target model gets from the upcycle seed.
std::vector<float> fresh_router(const Config& target, int64_t layer) {
  auto m = build_model(target);
  m->initialize(k_upcycle_seed);
  return values(*m, "layers." + std::to_string(layer) + ".moe.router.weight");
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST_CASE("copy: every expert is the dense FFN and the MoE logits equal the dense ones", "[upcycle]") {
  test::TempDir dir("moe-upcycle-copy");
  for (const char* act : {"swiglu", "gelu"}) {
    for (int64_t k : {1, 2}) {
      INFO(act << " top_k " << k);
      Config dense_c = dense_config(act);
      auto dense = write_dense_checkpoint(dense_c, dir.str("dense"));
      Config target = moe_config(dense_c, 4, k, 32);
      UpcycleResult r = upcycle_checkpoint(dir.str("dense"), target, dir.str("moe"), options(UpcycleMode::copy));
      REQUIRE(r.layers.size() == 2);
      REQUIRE(r.warnings.empty());

      auto moe = build_model(target);
      AdamW optimizer(moe->params(), target.optim);
      TrainerState state = read_checkpoint(dir.str("moe"), moe->params(), &optimizer);
      REQUIRE(state.step == 0);  // the optimizer restarts: step 0, zero moments
      for (int g = 0; g < k_num_param_groups; ++g) {
        for (double v : optimizer.moment1(static_cast<ParamGroup>(g)).to_vector<double>()) REQUIRE(v == 0.0);
        for (double v : optimizer.moment2(static_cast<ParamGroup>(g)).to_vector<double>()) REQUIRE(v == 0.0);
      }
      // Everything but the MoE layers' FFNs is the dense model's, bit for bit.
      for (const ParamInfo& p : dense->params().infos()) {
        if (p.name == "layers.1.ffn.w_up" || p.name == "layers.1.ffn.w_down" || p.name == "layers.2.ffn.w_up" ||
            p.name == "layers.2.ffn.w_down") {
          continue;
        }
        INFO(p.name);
        REQUIRE(values(*moe, p.name) == values(*dense, p.name));
        REQUIRE(std::find(r.copied.begin(), r.copied.end(), p.name) != r.copied.end());
      }
      for (int64_t layer : {1, 2}) {
        const std::string ffn = "layers." + std::to_string(layer) + ".ffn.";
        for (int64_t e = 0; e < 4; ++e) {
          Expert x = expert_of(*moe, layer, e);
          REQUIRE(x.up == values(*dense, ffn + "w_up"));
          REQUIRE(x.down == values(*dense, ffn + "w_down"));
        }
        REQUIRE(values(*moe, "layers." + std::to_string(layer) + ".moe.router.weight") == fresh_router(target, layer));
      }
      // The experts are identical, so y = (sum of the selected weights) * FFN(x), and with
      // renormalised weights the sum is one. Not bit-identical in f32: the renormalised weights
      // sum to 1 within one rounding (w_i = fl(p_i / sum)), the combine accumulates in f64 and
      // rounds once, and an expert's GEMM over its subset of tokens may use another Eigen kernel
      // path (GEMV for one row) than the dense GEMM over all tokens. Each is a relative error of
      // a few 1e-8 that the next layers carry to the logits.
      const double diff = max_abs_diff(logits_of(*moe), logits_of(*dense));
      INFO("max |logit difference| " << diff);
      REQUIRE(diff <= 1e-6);
    }
  }
}

TEST_CASE("fine_grained: relu virtual groups reproduce the dense logits with exactly scaled segments",
          "[upcycle]") {
  test::TempDir dir("moe-upcycle-fine");
  Config dense_c = dense_config("relu");
  auto dense = write_dense_checkpoint(dense_c, dir.str("dense"));
  const std::vector<double> dense_logits = logits_of(*dense);

  struct Case {
    const char* router;
    int64_t experts, top_k, d_expert, granularity, groups;
  };
  // G = d_ff / expert width; the routed slots k = top_k * granularity are a multiple of G.
  for (Case c : {Case{"softmax_topk", 8, 4, 16, 1, 2}, Case{"topk_softmax", 8, 2, 16, 1, 2},
                 Case{"softmax_topk", 2, 1, 32, 4, 4}, Case{"sigmoid", 8, 4, 8, 1, 4}}) {
    INFO(c.router << " E " << c.experts << " k " << c.top_k << " d_expert " << c.d_expert << " m " << c.granularity);
    Config target = moe_config(dense_c, c.experts, c.top_k, c.d_expert);
    target.moe.router = c.router;
    target.moe.granularity = c.granularity;
    validate_config(target);
    UpcycleResult r = upcycle_checkpoint(dir.str("dense"), target, dir.str("moe"), options(UpcycleMode::fine_grained));
    REQUIRE(r.warnings.empty());
    auto moe = load_upcycled(target, dir.str("moe"));
    const int64_t num_experts = c.experts * c.granularity, f_e = c.d_expert / c.granularity, G = c.groups;
    for (const UpcycledLayer& l : r.layers) {
      REQUIRE(l.groups == G);
      REQUIRE(l.replicas == num_experts / G);
      REQUIRE(l.scale == static_cast<double>(G));  // renormalised: s = G
    }
    for (int64_t layer : {1, 2}) {
      DenseFfn ffn = dense_ffn(*dense, layer);
      // Expert e = segment e % G of the hidden units, w_up and w_down each times sqrt(G).
      for (int64_t e = 0; e < num_experts; ++e) {
        Expert x = expert_of(*moe, layer, e);
        const int64_t g = e % G;
        for (int64_t u = 0; u < f_e; ++u) {
          for (int64_t row = 0; row < ffn.d; ++row) {
            REQUIRE(x.gate(row, u) == static_cast<float>(ffn.gate(row, g * f_e + u) * std::sqrt(double(G))));
          }
          for (int64_t col = 0; col < ffn.d; ++col) {
            REQUIRE(x.down[u * ffn.d + col] == static_cast<float>(ffn.downv(g * f_e + u, col) * std::sqrt(double(G))));
          }
        }
      }
      // Router column of expert e = fresh column e / G.
      std::vector<float> fresh = fresh_router(target, layer);
      std::vector<float> router = values(*moe, "layers." + std::to_string(layer) + ".moe.router.weight");
      for (int64_t row = 0; row < ffn.d; ++row) {
        for (int64_t e = 0; e < num_experts; ++e) {
          REQUIRE(router[row * num_experts + e] == fresh[row * num_experts + e / G]);
        }
      }
    }
    // relu(a x) = a relu(x) for a > 0; each selected group holds every segment with weight
    // p_r / (G sum p) per expert, so G * sum over segments = the dense FFN: only rounding differs
    // (the segment sums, sqrt(G) scaling and tied weights each round in f32: a few 1e-8 here).
    test::require_close(logits_of(*moe), dense_logits, 1e-6, 1e-5, "fine-grained logits vs dense");
  }

  SECTION("k not a multiple of G splits virtual groups: a warning, and the logits move") {
    Config target = moe_config(dense_c, 8, 3, 16);  // G = 2, k = 3
    UpcycleResult r = upcycle_checkpoint(dir.str("dense"), target, dir.str("moe"), options(UpcycleMode::fine_grained));
    REQUIRE(r.warnings.size() == 2);
    REQUIRE_THAT(r.warnings[0], Contains("3 routed experts per token is not a multiple of G = 2"));
    REQUIRE(max_abs_diff(logits_of(*load_upcycled(target, dir.str("moe"))), dense_logits) > 1e-3);
  }
}

TEST_CASE("fine_grained without renormalisation scales by (R*G*G/k)^(1/2), GLU by the cube root", "[upcycle]") {
  test::TempDir dir("moe-upcycle-norenorm");
  for (const char* act : {"relu", "swiglu"}) {
    INFO(act);
    Config dense_c = dense_config(act);
    auto dense = write_dense_checkpoint(dense_c, dir.str("dense"));
    Config target = moe_config(dense_c, 8, 2, 16);  // G = 2, R = 4, k = 2: s = 4*2*2/2 = 8
    target.moe.renormalize = false;
    UpcycleResult r = upcycle_checkpoint(dir.str("dense"), target, dir.str("moe"), options(UpcycleMode::fine_grained));
    REQUIRE(r.layers.at(0).scale == 8.0);
    REQUIRE(fine_grained_scale(target.moe, 8, 2, 2) == 8.0);
    // moe.layer_routers: each layer's own router decides (topk_softmax renormalises: s = G).
    Config mixed = target;
    mixed.moe.layer_routers = {"topk_softmax", "softmax_topk"};
    validate_config(mixed);
    UpcycleResult per_layer =
        upcycle_checkpoint(dir.str("dense"), mixed, dir.str("mixed"), options(UpcycleMode::fine_grained));
    REQUIRE(per_layer.layers.at(0).scale == 2.0);
    REQUIRE(per_layer.layers.at(1).scale == 8.0);
    auto moe = load_upcycled(target, dir.str("moe"));
    const bool gated = std::string(act) == "swiglu";
    const double factor = gated ? std::pow(8.0, 1.0 / 3.0) : std::sqrt(8.0);
    for (int64_t layer : {1, 2}) {
      DenseFfn ffn = dense_ffn(*dense, layer);
      for (int64_t e = 0; e < 8; ++e) {
        Expert x = expert_of(*moe, layer, e);
        const int64_t base = (e % 2) * 16;
        std::vector<double> got, want;
        for (int64_t row = 0; row < ffn.d; ++row) {
          for (int64_t u = 0; u < 16; ++u) {
            got.push_back(x.gate(row, u));
            want.push_back(ffn.gate(row, base + u) * factor);
            if (gated) {  // segment g = [gate_g | up_g]: the up half comes from the dense up half
              got.push_back(x.upv(row, u));
              want.push_back(ffn.upv(row, base + u) * factor);
            }
          }
        }
        for (int64_t u = 0; u < 16; ++u) {
          for (int64_t col = 0; col < ffn.d; ++col) {
            got.push_back(x.down[u * ffn.d + col]);
            want.push_back(ffn.downv(base + u, col) * factor);
          }
        }
        test::require_close(got, want, 0.0, 1e-7, "scaled segment");  // one f32 rounding
      }
    }
  }
}

// For partial re-init: which dense unit each expert unit came from, recovered by counting the
// entries that equal a dense unit's (about half survive; a wrong unit matches none).
struct UnitMatch {
  std::vector<int64_t> source;                   // per expert unit
  std::vector<double> up_redrawn, down_redrawn;  // values of the entries that differ
};

UnitMatch match_units(const DenseFfn& ffn, const Expert& x) {
  UnitMatch m;
  for (int64_t u = 0; u < x.f_e; ++u) {
    int64_t best = -1, best_count = 0, second = 0;
    for (int64_t j = 0; j < ffn.f; ++j) {
      int64_t count = 0;
      for (int64_t r = 0; r < ffn.d; ++r) {
        count += x.gate(r, u) == ffn.gate(r, j);
        if (ffn.gated) count += x.upv(r, u) == ffn.upv(r, j);
      }
      for (int64_t c = 0; c < ffn.d; ++c) count += x.down[u * ffn.d + c] == ffn.downv(j, c);
      if (count > best_count) {
        second = best_count;
        best_count = count;
        best = j;
      } else {
        second = std::max(second, count);
      }
    }
    REQUIRE(best >= 0);
    REQUIRE(second == 0);
    m.source.push_back(best);
    for (int64_t r = 0; r < ffn.d; ++r) {
      if (x.gate(r, u) != ffn.gate(r, best)) m.up_redrawn.push_back(x.gate(r, u));
      if (ffn.gated && x.upv(r, u) != ffn.upv(r, best)) m.up_redrawn.push_back(x.upv(r, u));
    }
    for (int64_t c = 0; c < ffn.d; ++c) {
      if (x.down[u * ffn.d + c] != ffn.downv(best, c)) m.down_redrawn.push_back(x.down[u * ffn.d + c]);
    }
  }
  return m;
}

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s / static_cast<double>(v.size()));
}

TEST_CASE("partial_reinit: shuffled units, the asked fraction re-drawn, shared experts, reproducible", "[upcycle]") {
  test::TempDir dir("moe-upcycle-partial");
  Config dense_c = dense_config("swiglu");
  auto dense = write_dense_checkpoint(dense_c, dir.str("dense"));
  Config target = moe_config(dense_c, 4, 2, 16);
  target.moe.num_shared_experts = 2;
  target.moe.d_shared = 24;
  target.moe.shared_gate = true;
  validate_config(target);

  for (double fraction : {0.5, 0.3, 0.0}) {
    INFO("fraction " << fraction);
    UpcycleResult r = upcycle_checkpoint(dir.str("dense"), target, dir.str("moe"),
                                         options(UpcycleMode::partial_reinit, fraction));
    auto moe = load_upcycled(target, dir.str("moe"));
    const auto up_count = std::llround(fraction * 16 * 32), down_count = std::llround(fraction * 16 * 16);
    std::vector<double> up_redrawn, down_redrawn;
    for (int64_t layer : {1, 2}) {
      DenseFfn ffn = dense_ffn(*dense, layer);
      std::set<std::vector<int64_t>> unit_lists;
      for (int64_t e = 0; e < 4; ++e) {
        UnitMatch m = match_units(ffn, expert_of(*moe, layer, e));
        REQUIRE(std::set<int64_t>(m.source.begin(), m.source.end()).size() == 16);  // distinct units
        REQUIRE(static_cast<int64_t>(m.up_redrawn.size()) == up_count);
        REQUIRE(static_cast<int64_t>(m.down_redrawn.size()) == down_count);
        unit_lists.insert(m.source);
        up_redrawn.insert(up_redrawn.end(), m.up_redrawn.begin(), m.up_redrawn.end());
        down_redrawn.insert(down_redrawn.end(), m.down_redrawn.begin(), m.down_redrawn.end());
      }
      REQUIRE(unit_lists.size() == 4);  // a different shuffle per expert
      REQUIRE(r.layers.at(static_cast<size_t>(layer - 1)).reinit_entries == 4 * (up_count + down_count));

      // Shared experts: two FFNs of 24 units, w_up [gate_1 gate_2 | up_1 up_2], each unit a dense
      // unit exactly (no re-init), distinct within an expert.
      const std::string prefix = "layers." + std::to_string(layer) + ".moe.shared.";
      std::vector<float> s_up = values(*moe, prefix + "w_up"), s_down = values(*moe, prefix + "w_down");
      for (int64_t s = 0; s < 2; ++s) {
        std::set<int64_t> used;
        for (int64_t u = 0; u < 24; ++u) {
          const int64_t col = s * 24 + u;
          int64_t found = -1;
          for (int64_t j = 0; j < 32 && found < 0; ++j) {
            bool same = true;
            for (int64_t row = 0; row < 16; ++row) {
              same = same && s_up[row * 96 + col] == ffn.gate(row, j) && s_up[row * 96 + 48 + col] == ffn.upv(row, j) &&
                     s_down[col * 16 + row] == ffn.downv(j, row);
            }
            if (same) found = j;
          }
          REQUIRE(found >= 0);
          used.insert(found);
        }
        REQUIRE(used.size() == 24);
      }
    }
    if (fraction > 0) {
      // Re-drawn from the model's initialisation: init_std for w_up, the residual-scaled
      // init_std / sqrt(2 * layers) for w_down.
      const double up_std = target.model.init_std, down_std = up_std / std::sqrt(2.0 * 3);
      REQUIRE(rms(up_redrawn) / up_std == Approx(1.0).margin(0.15));
      REQUIRE(rms(down_redrawn) / down_std == Approx(1.0).margin(0.15));
    }
  }

  SECTION("reproducible from the seed") {
    upcycle_checkpoint(dir.str("dense"), target, dir.str("a"), options(UpcycleMode::partial_reinit, 0.5, 3));
    upcycle_checkpoint(dir.str("dense"), target, dir.str("b"), options(UpcycleMode::partial_reinit, 0.5, 3));
    upcycle_checkpoint(dir.str("dense"), target, dir.str("c"), options(UpcycleMode::partial_reinit, 0.5, 4));
    auto a = load_upcycled(target, dir.str("a")), b = load_upcycled(target, dir.str("b"));
    auto c = load_upcycled(target, dir.str("c"));
    for (const ParamInfo& p : a->params().infos()) REQUIRE(values(*a, p.name) == values(*b, p.name));
    for (const char* name : {"layers.1.moe.experts.w_up", "layers.1.moe.experts.w_down", "layers.1.moe.shared.w_up",
                             "layers.1.moe.router.weight"}) {
      REQUIRE(values(*a, name) != values(*c, name));
    }
    nlohmann::json record = nlohmann::json::parse(read_text(dir.str("a") + "/upcycle.json"));
    REQUIRE(record["mode"] == "partial_reinit");
    REQUIRE(record["seed"] == 3);
    REQUIRE(record["reinit_fraction"] == 0.5);
  }
}

void require_fails(const std::string& from, const Config& target, const std::string& out, const UpcycleOptions& o,
                   const std::string& message) {
  INFO("expected: " << message);
  try {
    upcycle_checkpoint(from, target, out, o);
    FAIL("no error");
  } catch (const Error& e) {
    const std::string what = e.what();
    REQUIRE_THAT(what, Contains(message));
    REQUIRE(what.find('\n') == std::string::npos);  // one line
  }
}

TEST_CASE("upcycle rejects bad input with one line naming the problem", "[upcycle][errors]") {
  test::TempDir dir("moe-upcycle-errors");
  Config dense_c = dense_config("swiglu");
  write_dense_checkpoint(dense_c, dir.str("dense"));
  const std::string src = dir.str("dense"), out = dir.str("out");
  const Config ok = moe_config(dense_c, 4, 2, 32);
  const UpcycleOptions copy = options(UpcycleMode::copy);

  // Missing files.
  require_fails(dir.str("nowhere"), ok, out, copy, "upcycle source " + dir.str("nowhere") + " does not exist");
  fs::create_directories(dir.str("empty"));
  require_fails(dir.str("empty"), ok, out, copy, "has no model.safetensors");
  fs::create_directories(dir.str("no_config"));
  fs::copy_file(src + "/model.safetensors", dir.str("no_config") + "/model.safetensors");
  require_fails(dir.str("no_config"), ok, out, copy, "has no config.toml");

  // The source is an MoE checkpoint.
  upcycle_checkpoint(src, ok, dir.str("moe"), copy);
  require_fails(dir.str("moe"), ok, out, copy,
                "upcycle source " + dir.str("moe") +
                    " is not a dense checkpoint: it has MoE parameters (layers.1.moe.experts.w_down, and 5 more)");

  // Shapes and names that differ between the dense and the target model.
  Config wide = ok;
  wide.model.d_ff = 48;  // the dense layer 0 keeps model.d_ff
  require_fails(src, wide, out, copy, "upcycle: parameter 'layers.0.ffn.w_up' has shape [16,64] in the dense "
                                      "checkpoint " + src + " but [16,96] in the target model");
  Config vocab = ok;
  vocab.model.vocab_size = 40;
  require_fails(src, vocab, out, copy, "parameter 'embed.tokens' has shape [32,16]");
  Config learned = ok;
  learned.model.positions = "learned";
  require_fails(src, learned, out, copy,
                "the target model's parameter 'embed.positions' is not in the dense checkpoint");
  Config untied = ok;
  untied.model.tie_embeddings = false;
  require_fails(src, untied, out, copy, "the target model's parameter 'lm_head.weight' is not in the dense checkpoint");
  Config no_moe = dense_c;
  require_fails(src, no_moe, out, copy, "has moe.num_experts = 0: there is no MoE layer to build");
  Config geglu = ok;
  geglu.moe.activation = "geglu";
  require_fails(src, geglu, out, copy, "the experts' activation 'geglu' differs from the dense FFN's 'swiglu'");

  // Widths the mode cannot use.
  require_fails(src, moe_config(dense_c, 4, 2, 16), out, copy,
                "upcycle --mode copy needs the expert width (moe.d_expert = 16) to equal the dense d_ff = 32 of "
                "layer 1");
  Config granular = ok;
  granular.moe.granularity = 2;
  require_fails(src, granular, out, copy, "upcycle --mode copy needs moe.granularity = 1 (it is 2)");
  Config shared = ok;
  shared.moe.num_shared_experts = 1;
  require_fails(src, shared, out, copy, "upcycle --mode copy builds no shared experts (moe.num_shared_experts = 1)");
  const UpcycleOptions fine = options(UpcycleMode::fine_grained);
  require_fails(src, moe_config(dense_c, 4, 2, 12), out, fine,
                "the dense d_ff = 32 of layer 1 in " + src + " is not a multiple of the expert width 12");
  require_fails(src, moe_config(dense_c, 3, 2, 16), out, fine,
                "3 experts (moe.num_experts * moe.granularity) are not a multiple of G = d_ff / expert width = 2");
  Config hash = moe_config(dense_c, 4, 2, 16);
  hash.moe.router = "hash";
  hash.moe.top_k = 1;
  require_fails(src, hash, out, fine, "upcycle --mode fine_grained needs a token-choice router with learned weights");
  Config hash_layer = moe_config(dense_c, 4, 1, 16);
  hash_layer.moe.layer_routers = {"softmax_topk", "hash"};
  require_fails(src, hash_layer, out, fine, "with learned weights (moe.router = softmax_topk, topk_softmax, "
                                            "sigmoid or noisy_topk), not 'hash'");
  require_fails(src, moe_config(dense_c, 4, 2, 64), out, options(UpcycleMode::partial_reinit),
                "upcycle --mode partial_reinit: the expert width 64 is larger than the dense d_ff = 32 of layer 1");
  Config wide_shared = moe_config(dense_c, 4, 2, 16);
  wide_shared.moe.num_shared_experts = 1;
  wide_shared.moe.d_shared = 40;
  require_fails(src, wide_shared, out, options(UpcycleMode::partial_reinit),
                "the shared expert width 40 (moe.d_shared) is larger than the dense d_ff = 32");
  require_fails(src, moe_config(dense_c, 4, 2, 16), out, options(UpcycleMode::partial_reinit, 1.5),
                "upcycle --reinit-fraction 1.5 is outside [0, 1]");
  REQUIRE_THROWS_WITH(upcycle_mode_from_name("random"), Contains("unknown upcycle mode 'random'"));

  // Output directories that must not be replaced.
  require_fails(src, ok, src, copy, "is the source checkpoint");
  fs::create_directories(dir.str("notes"));
  std::ofstream(dir.str("notes") + "/keep.txt") << "precious\n";
  require_fails(src, ok, dir.str("notes"), copy, "exists and is not a checkpoint directory: refusing to replace it");
  REQUIRE(fs::exists(dir.str("notes") + "/keep.txt"));
}

// The `moe` binary: train a dense model, upcycle it, evaluate both (same validation loss), and
// resume training from the upcycled checkpoint.
std::string run_binary(const std::string& args, const std::string& log, int* status) {
  const std::string cmd = std::string(std::getenv("MOE_BINARY")) + " " + args + " > " + log + " 2>&1";
  *status = std::system(cmd.c_str());
  return read_text(log);
}

double val_loss(const std::string& output) {
  std::istringstream lines(output);
  std::string line, last;
  while (std::getline(lines, line)) {
    if (line.find("\"val_loss\"") != std::string::npos) last = line;
  }
  REQUIRE(!last.empty());
  return nlohmann::json::parse(last)["val_loss"].get<double>();
}

TEST_CASE("the moe binary upcycles a trained dense checkpoint that moe train resumes", "[upcycle][cli]") {
  if (std::getenv("MOE_BINARY") == nullptr) {
    WARN("MOE_BINARY is not set (run through ctest): skipping the binary check");
    return;
  }
  test::TempDir dir("moe-upcycle-cli");
  Config dense_c = test::tiny_train_config(dir);
  dense_c.moe.num_experts = 0;
  dense_c.train.steps = 3;
  dense_c.train.eval_every = 0;
  dense_c.train.run_dir = dir.str("dense_run");
  Config moe_c = dense_c;
  moe_c.moe.num_experts = 4;
  moe_c.moe.top_k = 2;
  moe_c.moe.d_expert = dense_c.model.d_ff;
  moe_c.moe.first_dense = 0;
  moe_c.train.steps = 2;
  moe_c.train.run_dir = dir.str("moe_run");
  validate_config(dense_c);
  validate_config(moe_c);
  std::ofstream(dir.str("dense.toml")) << to_toml(dense_c);
  std::ofstream(dir.str("moe.toml")) << to_toml(moe_c);
  const std::string log = dir.str("log.txt"), ckpt = dir.str("dense_run/checkpoints/step_3"), up = dir.str("up");
  int status = 0;

  run_binary("train " + dir.str("dense.toml"), log, &status);
  REQUIRE(status == 0);
  std::string out =
      run_binary("upcycle --from " + ckpt + " --config " + dir.str("moe.toml") + " --out " + up, log, &status);
  INFO(out);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("(mode copy, seed 1234)"));
  REQUIRE_THAT(out, Contains("2 MoE layers built"));
  const double dense_loss =
      val_loss(run_binary("eval " + dir.str("dense.toml") + " --checkpoint " + ckpt, log, &status));
  REQUIRE(status == 0);
  const double moe_loss = val_loss(run_binary("eval " + dir.str("moe.toml") + " --checkpoint " + up, log, &status));
  REQUIRE(status == 0);
  REQUIRE(moe_loss == Approx(dense_loss).epsilon(1e-6));

  out = run_binary("train " + dir.str("moe.toml") + " --set train.resume=" + up, log, &status);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("loaded checkpoint " + up + " (step 0)"));
  REQUIRE_THAT(out, Contains("step 2/2"));
  REQUIRE(fs::exists(dir.str("moe_run/checkpoints/step_2/model.safetensors")));

  // Bad input through the binary: a non-zero exit and the one-line reason.
  out = run_binary("upcycle --from " + dir.str("moe_run/checkpoints/step_2") + " --config " + dir.str("moe.toml") +
                       " --out " + dir.str("again"),
                   log, &status);
  REQUIRE(status != 0);
  REQUIRE_THAT(out, Contains("is not a dense checkpoint: it has MoE parameters (layers.0.moe."));
  out = run_binary("upcycle --from " + ckpt + " --config " + dir.str("moe.toml") + " --out " + dir.str("again") +
                       " --reinit-fraction 0.3",
                   log, &status);
  REQUIRE(status != 0);
  REQUIRE_THAT(out, Contains("--reinit-fraction applies to --mode partial_reinit only"));
  REQUIRE(!fs::exists(dir.str("again")));
}

}  // namespace
}  // namespace moe

// The MultiHash router: N distinct experts per token with weight 1/N, deterministic from the seed
// (N = 1 is the hash router's random table), the per-layer option, tensor-parallel slices, the
// MoE layer averaging its N experts, and the errors of the router, its factory and the config.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "experts/moe_layer.h"
#include "routing/hash_table.h"
#include "routing/multihash_router.h"
#include "routing/router_registry.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;
using Catch::StartsWith;

namespace {

MultiHashRouterOptions options(int64_t experts, int64_t vocab, int64_t hashes, uint64_t seed = 17) {
  MultiHashRouterOptions o;
  o.num_experts = experts;
  o.vocab_size = vocab;
  o.num_hashes = hashes;
  o.seed = seed;
  return o;
}

RouteInputs inputs(const std::vector<int32_t>* tokens, int64_t seq_len, int64_t first_token = 0) {
  RouteInputs in;
  in.tokens = tokens;
  in.seq_len = seq_len;
  in.first_token = first_token;
  return in;
}

std::vector<int32_t> all_tokens(int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) t[static_cast<size_t>(v)] = static_cast<int32_t>(v);
  return t;
}

}  // namespace

TEST_CASE("multihash routes every token to N distinct experts with weight 1/N", "[hash]") {
  for (int64_t experts : {4, 7}) {
    for (int64_t n = 1; n <= 4; ++n) {
      INFO(experts << " experts, " << n << " hashes");
      MultiHashRouter r(options(experts, 50, n));
      REQUIRE(r.slots_per_token() == n);
      REQUIRE(r.experts_per_token() == static_cast<double>(n));
      REQUIRE(r.name() == "multihash");
      const std::vector<int32_t> tokens = {3, 0, 49, 3, 17, 8};
      Tensor x = test::random_tensor({6, 5}, DType::f64, 2);
      RouterSaved saved;
      Routing routing = r.route(x, inputs(&tokens, 3), saved);
      REQUIRE(routing.ids.shape() == Shape({6, n}));
      REQUIRE(routing.weights.shape() == Shape({6, n}));
      REQUIRE_FALSE(routing.scores.defined());  // nothing for the balancing terms
      const std::vector<int32_t> ids = routing.ids.to_vector<int32_t>();
      for (double w : routing.weights.to_vector<double>()) REQUIRE(w == 1.0 / static_cast<double>(n));
      for (size_t t = 0; t < tokens.size(); ++t) {
        std::vector<int32_t> row(ids.begin() + static_cast<std::ptrdiff_t>(t * n),
                                 ids.begin() + static_cast<std::ptrdiff_t>((t + 1) * n));
        REQUIRE(row == r.experts_of(tokens[t]));  // a function of the token id alone
        REQUIRE(std::set<int32_t>(row.begin(), row.end()).size() == static_cast<size_t>(n));
        for (int32_t e : row) REQUIRE((e >= 0 && e < experts));
      }
    }
  }
  // f32 activations get f32 weights.
  MultiHashRouter r(options(4, 50, 2));
  const std::vector<int32_t> tokens = {1, 2};
  RouterSaved saved;
  Routing routing = r.route(test::random_tensor({2, 3}, DType::f32, 1), inputs(&tokens, 2), saved);
  REQUIRE(routing.weights.dtype() == DType::f32);
  REQUIRE(routing.weights.to_vector<float>() == std::vector<float>(4, 0.5f));
}

TEST_CASE("multihash is deterministic from the seed, and its first hash is the random table", "[hash]") {
  const int64_t experts = 8, vocab = 300;
  MultiHashRouter a(options(experts, vocab, 3)), again(options(experts, vocab, 3));
  MultiHashRouter other(options(experts, vocab, 3, 18));
  const HashTable random = build_random_hash_table(vocab, experts, 17);
  int64_t differs = 0;
  for (int32_t v = 0; v < vocab; ++v) {
    REQUIRE(a.experts_of(v) == again.experts_of(v));
    REQUIRE(a.experts_of(v)[0] == random.table[static_cast<size_t>(v)]);
    differs += a.experts_of(v) != other.experts_of(v) ? 1 : 0;
  }
  REQUIRE(differs > vocab / 2);  // another seed, other experts
  MultiHashRouter one(options(experts, vocab, 1));
  for (int32_t v = 0; v < vocab; ++v) REQUIRE(one.experts_of(v) == std::vector<int32_t>{random.table[v]});

  // Every expert gets about its share of the (token, hash) pairs: 4096 * 2 / 8 = 1024 each.
  MultiHashRouter wide(options(experts, 4096, 2));
  std::vector<int64_t> load(static_cast<size_t>(experts));
  const std::vector<int32_t> tokens = all_tokens(4096);
  for (int32_t e : wide.expert_ids(4096, inputs(&tokens, 4096))) ++load[static_cast<size_t>(e)];
  for (int64_t l : load) REQUIRE(std::abs(static_cast<double>(l) - 1024.0) < 0.1 * 1024.0);
}

TEST_CASE("multihash: moe.hash_per_layer gives every layer its own hashes", "[hash]") {
  auto layer = [](int64_t index, bool per_layer) {
    MultiHashRouterOptions o = options(6, 200, 2);
    o.layer_index = index;
    o.per_layer = per_layer;
    return MultiHashRouter(o);
  };
  MultiHashRouter shared0 = layer(0, false), shared3 = layer(3, false);
  MultiHashRouter own0 = layer(0, true), own3 = layer(3, true);
  REQUIRE(shared3.seed() == 17);
  REQUIRE(own0.seed() == hash_layer_seed(17, 0));
  REQUIRE(own3.seed() == hash_layer_seed(17, 3));
  int64_t differs = 0;
  for (int32_t v = 0; v < 200; ++v) {
    REQUIRE(shared0.experts_of(v) == shared3.experts_of(v));
    differs += own0.experts_of(v) != own3.experts_of(v) ? 1 : 0;
  }
  REQUIRE(differs > 100);
  // Through the registry: the layer index comes from RouterSpec::layer.
  MoeConfig m;
  m.num_experts = 6;
  m.router = "multihash";
  m.hash_seed = 17;
  m.hash_per_layer = true;
  ParamStore store;
  auto built = make_router(store, "r", m, RouterSpec{4, 200, 6, 2, 3, 0.02});
  const auto* r = dynamic_cast<const MultiHashRouter*>(built.get());
  REQUIRE(r != nullptr);
  REQUIRE(r->seed() == own3.seed());
  REQUIRE(r->slots_per_token() == 2);  // moe.hash_count (2 by default), not RouterSpec::top_k
  REQUIRE(store.infos().empty());      // no parameters
}

TEST_CASE("multihash: a tensor-parallel slice routes its rows as the whole batch does", "[hash]") {
  MultiHashRouter r(options(5, 40, 3));
  const std::vector<int32_t> tokens = {5, 9, 9, 39, 0, 12, 7, 1};
  const std::vector<int32_t> whole = r.expert_ids(8, inputs(&tokens, 4));
  const std::vector<int32_t> slice = r.expert_ids(3, inputs(&tokens, 4, 5));  // rows 5, 6, 7
  REQUIRE(slice == std::vector<int32_t>(whole.begin() + 15, whole.end()));
}

TEST_CASE("an MoE layer with multihash averages the outputs of a token's N experts", "[hash]") {
  const int64_t d = 4, f = 3, experts = 5, n = 3, tokens = 6;
  MoeConfig m;
  m.num_experts = experts;
  m.router = "multihash";
  m.hash_count = n;
  m.hash_seed = 9;
  MoeLayerConfig c;
  c.d_model = d;
  c.num_experts = experts;
  c.d_expert = f;
  c.activation = ops::Activation::relu;
  c.balancing = {};
  ParamStore store;
  MoeLayer layer(store, "moe", c, make_router(store, "moe.router", m, RouterSpec{d, 20, experts, 1, 0, 0.5}));
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(4);
  const std::vector<int32_t> ids = {3, 19, 0, 3, 11, 7};
  Tensor x = test::random_tensor({tokens, d}, DType::f64, 5);
  MoeLayerSaved saved;
  const std::vector<double> y = layer.forward(x, inputs(&ids, tokens), saved).to_vector<double>();

  // y[t] = 1/N sum over the token's experts e of relu(x[t] W_up[e]) W_down[e].
  const std::vector<double> xs = x.to_vector<double>();
  const std::vector<double> up = store.master(store.find("moe.experts.w_up")).to_vector<double>();
  const std::vector<double> down = store.master(store.find("moe.experts.w_down")).to_vector<double>();
  const auto& router = dynamic_cast<const MultiHashRouter&>(layer.router());
  std::vector<double> ref(static_cast<size_t>(tokens * d), 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int32_t e : router.experts_of(ids[static_cast<size_t>(t)])) {
      for (int64_t j = 0; j < f; ++j) {
        double h = 0;
        for (int64_t i = 0; i < d; ++i) h += xs[t * d + i] * up[(e * d + i) * f + j];
        for (int64_t o = 0; o < d; ++o) ref[t * d + o] += std::max(h, 0.0) * down[(e * f + j) * d + o] / n;
      }
    }
  }
  test::require_close(y, ref, 1e-12, 1e-12, "multihash layer output");
  REQUIRE(saved.stats.slots == tokens * n);
}

TEST_CASE("multihash errors name the problem", "[hash]") {
  REQUIRE_THROWS_WITH(MultiHashRouter(options(4, 50, 0)),
                      Contains("moe.hash_count = 0 must be between 1 and the 4 experts of this MoE layer"));
  REQUIRE_THROWS_WITH(MultiHashRouter(options(4, 50, 5)),
                      Contains("moe.hash_count = 5 must be between 1 and the 4 experts of this MoE layer"));
  MultiHashRouter r(options(4, 50, 2));
  const std::vector<int32_t> outside = {1, 50};
  REQUIRE_THROWS_WITH(r.expert_ids(2, inputs(&outside, 2)),
                      Contains("multihash: token id 50 at row 1 is outside the vocabulary of 50 tokens"));
  REQUIRE_THROWS_WITH(r.expert_ids(2, inputs(nullptr, 2)), Contains("multihash needs the tokens of the batch"));
  const std::vector<int32_t> short_batch = {1, 2};
  REQUIRE_THROWS_WITH(r.expert_ids(3, inputs(&short_batch, 3)),
                      Contains("multihash: 2 tokens for 3 rows from token 0"));

  // The factory: seeded random hashes only.
  MoeConfig m;
  m.num_experts = 4;
  m.router = "multihash";
  ParamStore store;
  const RouterSpec spec{4, 50, 4, 2, 0, 0.02};
  m.hash_kind = "bigram";
  REQUIRE_THROWS_WITH(make_router(store, "r", m, spec), Contains("moe.hash_kind must be \"random\", not \"bigram\""));
  m.hash_kind = "random";
  m.hash_table = "tables/balanced.safetensors";
  REQUIRE_THROWS_WITH(make_router(store, "r", m, spec),
                      Contains("moe.hash_table = \"tables/balanced.safetensors\" is one fixed table"));

  // The config: moe.hash_count's range, and more hashes than experts.
  REQUIRE_THROWS_WITH(parse_config("", "bad.toml", {"moe.hash_count=0"}),
                      StartsWith("--set moe.hash_count=0: moe.hash_count = 0 must be at least 1"));
  REQUIRE_THROWS_WITH(parse_config("", "bad.toml", {"moe.num_experts=4", "moe.router=multihash", "moe.hash_count=5"}),
                      StartsWith("--set moe.hash_count=5: moe.router \"multihash\" routes each token to 5 experts "
                                 "(moe.hash_count) but an MoE layer has 4 (moe.num_experts * moe.granularity)"));
  CHECK_NOTHROW(parse_config("", "ok.toml", {"moe.num_experts=4", "moe.granularity=2", "moe.router=multihash",
                                             "moe.hash_count=5"}));  // 8 fine-grained experts
}

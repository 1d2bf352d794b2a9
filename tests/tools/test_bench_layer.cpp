// `moe bench layer`: its FLOP count, and one MoE layer against the dense chain on the CPU.
#include <catch2/catch.hpp>

#include <cmath>

#include "src/tools/bench_layer.h"

using namespace moe;
using Catch::Contains;

namespace {

Config tiny_config(const std::string& router) {
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 16;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 8;
  c.model.activation = "swiglu";
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.d_expert = 8;
  c.moe.router = router;
  c.moe.num_shared_experts = 1;
  return c;
}

}  // namespace

TEST_CASE("expert FLOPs: three times the forward's up and down GEMMs", "[tools][bench]") {
  // forward 2 * rows * d * (2f + f) for SwiGLU, 2 * rows * d * (f + f) otherwise
  REQUIRE(expert_fwd_bwd_flops(10, 4, 3, true) == 3.0 * 2 * 10 * 4 * 9);
  REQUIRE(expert_fwd_bwd_flops(10, 4, 3, false) == 3.0 * 2 * 10 * 4 * 6);
}

TEST_CASE("bench layer times an MoE layer and the dense chain of equal FLOPs on the CPU", "[tools][bench]") {
  for (const char* router : {"softmax_topk", "expert_choice", "hash"}) {
    INFO(router);
    Config c = tiny_config(router);
    if (std::string(router) == "expert_choice") c.moe.capacity_factor = 1.0;
    LayerBenchOptions o;
    o.tokens = 32;
    o.warmup = 1;
    o.iters = 2;
    o.breakdown = true;
    const nlohmann::json r = bench_layer(c, Device::cpu(), o);
    REQUIRE(r.at("tokens") == 32);
    REQUIRE(r.at("experts") == 4);
    REQUIRE(r.at("shared_experts") == 1);
    const double per_token = r.at("experts_per_token").get<double>();
    REQUIRE(per_token == (std::string(router) == "softmax_topk" ? 2.0 : 1.0));
    REQUIRE(r.at("expert_flops").get<double>() == expert_fwd_bwd_flops(std::llround(32 * per_token), 16, 8, true));
    REQUIRE(r.at("layer_ms").get<double>() > 0);
    REQUIRE(r.at("dense_ms").get<double>() > 0);
    const double ratio = r.at("dense_ms").get<double>() / r.at("layer_ms").get<double>();
    REQUIRE(r.at("vs_dense").get<double>() == ratio);
    REQUIRE(r.at("ms_by_kind").contains("gemm"));
    REQUIRE(r.at("ms_by_kind").contains("permute"));
    // Per op, under the ops' own names, the kinds' time split without loss.
    const nlohmann::json& by_op = r.at("ms_by_op");
    REQUIRE(by_op.contains("moe_permute_rows"));
    REQUIRE(by_op.contains(r.at("experts_impl") == "grouped" ? "grouped_matmul_weight_grad" : "matmul"));
    double kinds = 0, ops = 0;
    for (const auto& [k, ms] : r.at("ms_by_kind").items()) kinds += ms.get<double>();
    for (const auto& [k, ms] : by_op.items()) ops += ms.get<double>();
    REQUIRE(ops == Approx(kinds));
  }
}

TEST_CASE("bench layer refuses a dense config and names the key", "[tools][bench]") {
  Config c = tiny_config("softmax_topk");
  c.moe.num_experts = 0;
  REQUIRE_THROWS_WITH(bench_layer(c, Device::cpu(), LayerBenchOptions{}), Contains("moe.num_experts = 0"));
}

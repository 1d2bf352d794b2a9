// `moe bench op`: the attention bench on the CPU at a tiny shape (what it reports and how its
// TFLOP/s follow from the times), the FLOP count, the median, and the errors for bad input.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <catch2/catch.hpp>

#include "src/tools/bench_op.h"

namespace moe::test {
namespace {

TEST_CASE("attention FLOPs follow the FlashAttention count", "[tools][bench]") {
  // 4 B H S^2 D: two S x S x D GEMMs per head; causal halves it.
  CHECK(attention_forward_flops(2, 8, 3, 4, false) == 4.0 * 2 * 3 * 64 * 4);
  CHECK(attention_forward_flops(2, 8, 3, 4, true) == 2.0 * 2 * 3 * 64 * 4);
}

TEST_CASE("median of odd and even counts", "[tools][bench]") {
  CHECK(median_of({3.0, 1.0, 2.0}) == 2.0);
  CHECK(median_of({4.0, 1.0, 3.0, 2.0}) == 2.5);
  REQUIRE_THROWS_WITH(median_of({}), Catch::Contains("median of no values"));
}

TEST_CASE("bench op attention reports times and TFLOP/s on the CPU", "[tools][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 33;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 8;
  o.causal = false;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("attention", o, Device::cpu());
  CHECK(r["op"] == "attention");
  CHECK(r["device"] == "cpu");
  CHECK(r["kv_heads"] == 2);
  CHECK(r["causal"] == false);
  for (const char* key : {"fwd_ms", "bwd_ms", "fwd_bwd_ms"}) CHECK(r[key].get<double>() > 0);
  const double flops = attention_forward_flops(2, 33, 4, 8, false);
  CHECK(r["fwd_tflops"].get<double>() == Approx(flops / (r["fwd_ms"].get<double>() * 1e-3) / 1e12));
  CHECK(r["bwd_tflops"].get<double>() == Approx(2.5 * flops / (r["bwd_ms"].get<double>() * 1e-3) / 1e12));
  CHECK(r["fwd_bwd_tflops"].get<double>() == Approx(3.5 * flops / (r["fwd_bwd_ms"].get<double>() * 1e-3) / 1e12));

  o.kv_heads = 0;  // default: as many kv heads as query heads
  o.causal = true;
  const nlohmann::json mha = bench_op("attention", o, Device::cpu());
  CHECK(mha["kv_heads"] == 4);
  CHECK(mha["causal"] == true);
  CHECK(mha["doc_len"] == 0);

  o.doc_len = 10;  // documents of 10 tokens: the masked kernels, the same FLOP count
  const nlohmann::json docs = bench_op("attention", o, Device::cpu());
  CHECK(docs["doc_len"] == 10);
  CHECK(docs["fwd_ms"].get<double>() > 0);
  CHECK(docs["fwd_tflops"].get<double>() ==
        Approx(attention_forward_flops(2, 33, 4, 8, true) / (docs["fwd_ms"].get<double>() * 1e-3) / 1e12));
  o.causal = false;
  REQUIRE_THROWS_WITH(bench_op("attention", o, Device::cpu()),
                      Catch::Contains("bench op attention: --doc-len 10 must be >= 0, and documents need the causal "
                                      "mask"));
}

TEST_CASE("bench op add_rmsnorm and add_layernorm report fused and unfused times and GB/s", "[tools][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 7;
  o.width = 37;
  o.warmup = 1;
  o.iters = 3;
  for (const char* name : {"add_rmsnorm", "add_layernorm"}) {
    INFO(name);
    const nlohmann::json r = bench_op(name, o, Device::cpu());
    CHECK(r["op"] == name);
    CHECK(r["tokens"] == 14);
    CHECK(r["width"] == 37);
    for (const char* key : {"fwd_ms", "unfused_fwd_ms", "bwd_ms", "unfused_bwd_ms"}) CHECK(r[key].get<double>() > 0);
    const double bytes = 4.0 * 14 * 37 * sizeof(float);  // f32 on the CPU
    CHECK(r["fwd_gbps"].get<double>() == Approx(bytes / (r["fwd_ms"].get<double>() * 1e-3) / 1e9));
    CHECK(r["bwd_gbps"].get<double>() == Approx(bytes / (r["bwd_ms"].get<double>() * 1e-3) / 1e9));
    CHECK(r["bwd_fraction_of_copy_peak"].get<double>() == Approx(r["bwd_gbps"].get<double>() * 1e9 / 4.3e12));
  }
  o.width = 0;
  REQUIRE_THROWS_WITH(bench_op("add_rmsnorm", o, Device::cpu()),
                      Catch::Contains("--batch, --seq and --width must be positive (got batch 2, seq 7, width 0)"));
}

TEST_CASE("bench op rope reports forward and inverse times and GB/s of q and k", "[tools][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 9;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 16;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("rope", o, Device::cpu());
  CHECK(r["op"] == "rope");
  CHECK(r["tokens"] == 18);
  CHECK(r["kv_heads"] == 2);
  for (const char* key : {"fwd_ms", "bwd_ms"}) CHECK(r[key].get<double>() > 0);
  const double bytes = 2.0 * 18 * (4 + 2) * 16 * sizeof(float);  // q and k read and written, f32 on the CPU
  CHECK(r["fwd_gbps"].get<double>() == Approx(bytes / (r["fwd_ms"].get<double>() * 1e-3) / 1e9));
  CHECK(r["bwd_gbps"].get<double>() == Approx(bytes / (r["bwd_ms"].get<double>() * 1e-3) / 1e9));
  o.head_dim = 7;
  REQUIRE_THROWS_WITH(bench_op("rope", o, Device::cpu()), Catch::Contains("--head-dim positive and even"));
}

TEST_CASE("bench op cross_entropy times the two ops against both at once, in GB/s", "[tools][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 5;
  o.vocab = 37;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("cross_entropy", o, Device::cpu());
  CHECK(r["op"] == "cross_entropy");
  CHECK(r["tokens"] == 10);
  CHECK(r["vocab"] == 37);
  const double bytes = 2.0 * 10 * 37 * sizeof(float);  // logits read, gradient written; f32 on the CPU
  CHECK(r["with_grad_gbps"].get<double>() == Approx(bytes / (r["with_grad_ms"].get<double>() * 1e-3) / 1e9));
  CHECK(r["two_ops_gbps"].get<double>() == Approx(bytes / (r["two_ops_ms"].get<double>() * 1e-3) / 1e9));
  o.vocab = 0;
  REQUIRE_THROWS_WITH(bench_op("cross_entropy", o, Device::cpu()),
                      Catch::Contains("--batch, --seq and --vocab must be positive (got batch 2, seq 5, vocab 0)"));
}

TEST_CASE("bench op grouped_gemm reports times and TFLOP/s of the six expert GEMMs on the CPU", "[tools][bench]") {
  CHECK(grouped_ffn_forward_flops(10, 6, 4) == 2 * 2.0 * 10 * 6 * 4);
  OpBenchOptions o;
  o.experts = 3;
  o.tokens_per_expert = 5;
  o.d_model = 8;
  o.d_expert = 16;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("grouped_gemm", o, Device::cpu());
  CHECK(r["op"] == "grouped_gemm");
  CHECK(r["rows"] == 15);
  for (const char* key : {"fwd_ms", "bwd_ms", "fwd_bwd_ms"}) CHECK(r[key].get<double>() > 0);
  const double flops = grouped_ffn_forward_flops(15, 8, 16);
  CHECK(r["fwd_tflops"].get<double>() == Approx(flops / (r["fwd_ms"].get<double>() * 1e-3) / 1e12));
  CHECK(r["bwd_tflops"].get<double>() == Approx(2 * flops / (r["bwd_ms"].get<double>() * 1e-3) / 1e12));
  CHECK(r["fwd_bwd_tflops"].get<double>() == Approx(3 * flops / (r["fwd_bwd_ms"].get<double>() * 1e-3) / 1e12));
  CHECK(r["wgrad_tflops"].get<double>() == Approx(flops / (r["wgrad_ms"].get<double>() * 1e-3) / 1e12));
  CHECK(r["skew"] == 0.0);
  CHECK(r["largest_expert_rows"] == 5);
  o.skew = 2;  // uneven experts, the same rows in all
  const nlohmann::json skewed = bench_op("grouped_gemm", o, Device::cpu());
  CHECK(skewed["rows"] == 15);
  CHECK(skewed["largest_expert_rows"].get<int64_t>() > 5);
  o.d_expert = 0;
  REQUIRE_THROWS_WITH(bench_op("grouped_gemm", o, Device::cpu()),
                      Catch::Contains("bench op grouped_gemm: --experts, --tokens-per-expert, --d-model, --d-expert "
                                      "must be positive (got 3, 5, 8, 0)"));
}

TEST_CASE("skewed expert rows keep the total and grow as exp(skew) from first to last", "[tools][bench]") {
  CHECK(skewed_expert_rows(4, 10, 0) == std::vector<int64_t>{10, 10, 10, 10});
  CHECK(skewed_expert_rows(1, 7, 3) == std::vector<int64_t>{7});
  const std::vector<int64_t> rows = skewed_expert_rows(64, 1536, 2);
  int64_t total = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    total += rows[e];
    if (e > 0) CHECK(rows[e] >= rows[e - 1]);
  }
  CHECK(total == 64 * 1536);
  CHECK(static_cast<double>(rows.back()) / static_cast<double>(rows.front()) == Approx(std::exp(2.0)).epsilon(0.01));
  // Few rows an expert: never a negative count, the total exact.
  const std::vector<int64_t> few = skewed_expert_rows(32, 1, 1.2);
  CHECK(std::all_of(few.begin(), few.end(), [](int64_t n) { return n >= 0; }));
  CHECK(std::accumulate(few.begin(), few.end(), int64_t{0}) == 32);
  REQUIRE_THROWS_WITH(skewed_expert_rows(4, 10, -1), Catch::Contains("the skew (-1) >= 0"));
}

TEST_CASE("bench op dense_gemm times a linear layer's three GEMMs on the CPU", "[tools][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 5;
  o.d_model = 8;
  o.d_expert = 12;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("dense_gemm", o, Device::cpu());
  CHECK(r["op"] == "dense_gemm");
  CHECK(r["tokens"] == 10);
  const double flops = 2.0 * 10 * 8 * 12;
  for (const char* gemm : {"forward", "input_grad", "weight_grad"}) {
    const double ms = r[std::string(gemm) + "_ms"].get<double>();
    CHECK(ms > 0);
    CHECK(r[std::string(gemm) + "_tflops"].get<double>() == Approx(flops / (ms * 1e-3) / 1e12));
  }
  o.d_model = 0;
  REQUIRE_THROWS_WITH(bench_op("dense_gemm", o, Device::cpu()),
                      Catch::Contains("bench op dense_gemm: --batch, --seq, --d-model, --d-expert must be positive "
                                      "(got 2, 5, 0, 12)"));
}

TEST_CASE("bench op balance times every balancing term on the CPU", "[tools][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 6;
  o.experts = 8;
  o.top_k = 2;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("balance", o, Device::cpu());
  CHECK(r["op"] == "balance");
  CHECK(r["tokens"] == 12);
  for (const char* key : {"switch_ms", "device_ms", "importance_ms", "load_ms", "z_ms", "seq_ms"})
    CHECK(r[key].get<double>() > 0);
  CHECK(r["te_copy_floor_ms"].get<double>() == Approx(2.0 * 12 * 8 * 4 / 4.3e12 * 1e3));
  o.top_k = 8;
  REQUIRE_THROWS_WITH(bench_op("balance", o, Device::cpu()),
                      Catch::Contains("bench op balance: --batch, --seq and --top-k must be positive and --top-k below "
                                      "--experts (got batch 2, seq 6, top-k 8, experts 8)"));
}

TEST_CASE("bench op permute times the fused and unfused permutation on the CPU", "[tools][bench]") {
  OpBenchOptions o{.batch = 2, .seq_len = 5, .experts = 4, .d_model = 8, .top_k = 3, .warmup = 1, .iters = 3};
  const nlohmann::json r = bench_op("permute", o, Device::cpu());
  CHECK(r["op"] == "permute");
  CHECK(r["tokens"] == 10);
  CHECK(r["fused_ms"].get<double>() > 0);
  CHECK(r["unfused_ms"].get<double>() > 0);
  CHECK(r["fused_gbps"].get<double>() == Approx(2.0 * 30 * 8 * 4 / (r["fused_ms"].get<double>() * 1e-3) / 1e9));
  o.top_k = 5;
  REQUIRE_THROWS_WITH(bench_op("permute", o, Device::cpu()),
                      Catch::Contains("bench op permute: --batch, --seq, --top-k and --d-model must be positive and "
                                      "--top-k at most --experts (got batch 2, seq 5, top-k 5, experts 4, d-model 8)"));
}

TEST_CASE("bench op router times the router with its Switch statistics, fused and unfused, on the CPU",
          "[tools][bench]") {
  OpBenchOptions o{.batch = 2, .seq_len = 5, .experts = 6, .top_k = 2, .warmup = 1, .iters = 3};
  const nlohmann::json r = bench_op("router", o, Device::cpu());
  CHECK(r["op"] == "router");
  CHECK(r["tokens"] == 10);
  CHECK(r["fused_ms"].get<double>() > 0);
  CHECK(r["unfused_ms"].get<double>() > 0);
  CHECK(r["te_copy_floor_ms"].get<double>() == Approx(2.0 * 10 * 6 * 4 / 4.3e12 * 1e3));
  o.top_k = 7;
  REQUIRE_THROWS_WITH(bench_op("router", o, Device::cpu()),
                      Catch::Contains("bench op router: --batch, --seq and --top-k must be positive and --top-k at "
                                      "most --experts (got batch 2, seq 5, top-k 7, experts 6)"));
}

TEST_CASE("bench op names an unknown op and a bad attention shape", "[tools][bench]") {
  OpBenchOptions o;
  REQUIRE_THROWS_WITH(bench_op("matmul", o, Device::cpu()),
                      Catch::Contains("bench op: unknown op 'matmul' (known: attention, rope, cross_entropy, "
                                      "add_rmsnorm, add_layernorm, grouped_gemm, dense_gemm, balance, permute, "
                                      "router)"));
  o.heads = 6;
  o.kv_heads = 4;
  REQUIRE_THROWS_WITH(bench_op("attention", o, Device::cpu()),
                      Catch::Contains("--heads a multiple of --kv-heads (got batch 4, seq 4096, heads 6/4"));
}

}  // namespace
}  // namespace moe::test

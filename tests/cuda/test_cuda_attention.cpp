// CUDA GQA attention vs the CPU reference, forward (out, lse) and backward (dq, dk, dv), causal,
// not, masked to documents, and cross-attention: the tensor-core flash kernels (head dims 64, 128)
// and the fp32 fallback (other head dims) over awkward sequence lengths, head counts and GQA ratios,
// plus GPT-2-small's shape.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include "src/ops/ops.h"
#include "src/tools/bench_op.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

struct Case {
  int64_t batch, seq_len, heads, kv_heads, head_dim;
  bool causal = true;
  int64_t kv_seq_len = 0;  // cross-attention: keys per sequence (0 = seq_len)
};

ops::AttentionShape shape_of(const Case& c) {
  return {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.causal, c.kv_seq_len};
}

// Forward and backward on both backends from identical inputs (and documents: their lengths per
// sequence, or none). The backward is fed the CPU forward's out (bf16-rounded) and lse on both sides.
void check_case(const Case& c, uint64_t seed, const std::vector<std::vector<int>>& docs = {}) {
  INFO("batch " << c.batch << " seq " << c.seq_len << " heads " << c.heads << "/" << c.kv_heads << " hd "
                << c.head_dim << (c.causal ? " causal" : " non-causal") << (docs.empty() ? "" : " documents")
                << " kv_seq_len " << c.kv_seq_len);
  const ops::AttentionShape shape = shape_of(c);
  const int64_t tokens = c.batch * c.seq_len, kv_tokens = c.batch * shape.kv_len();
  const Mirror starts = docs.empty() ? Mirror{} : document_starts_mirror(docs, c.seq_len);
  Mirror q = random_mirror({tokens, c.heads * c.head_dim}, DType::bf16, seed, -2.0, 2.0);
  Mirror k = random_mirror({kv_tokens, c.kv_heads * c.head_dim}, DType::bf16, seed + 1, -2.0, 2.0);
  Mirror v = random_mirror({kv_tokens, c.kv_heads * c.head_dim}, DType::bf16, seed + 2);
  Mirror out = poisoned_pair({tokens, c.heads * c.head_dim}, DType::bf16);
  Mirror lse = poisoned_pair({c.batch, c.heads, c.seq_len}, DType::f32);
  ops::attention_forward(q.cpu, k.cpu, v.cpu, out.cpu, lse.cpu, shape, starts.cpu);
  ops::attention_forward(q.gpu, k.gpu, v.gpu, out.gpu, lse.gpu, shape, starts.gpu);
  require_match(out, bf16_tol(), "attention out");
  require_match(lse, accum_tol(), "attention lse");

  Mirror saved_out = mirror_of(out.cpu, DType::bf16);
  Mirror saved_lse = mirror_of(lse.cpu, DType::f32);
  Mirror dout = random_mirror({tokens, c.heads * c.head_dim}, DType::bf16, seed + 3);
  Mirror dq = poisoned_pair(q.cpu.shape(), DType::bf16);
  Mirror dk = poisoned_pair(k.cpu.shape(), DType::bf16);
  Mirror dv = poisoned_pair(v.cpu.shape(), DType::bf16);
  ops::attention_backward(q.cpu, k.cpu, v.cpu, saved_out.cpu, saved_lse.cpu, dout.cpu, dq.cpu, dk.cpu, dv.cpu, shape,
                          Tensor(), starts.cpu);
  ops::attention_backward(q.gpu, k.gpu, v.gpu, saved_out.gpu, saved_lse.gpu, dout.gpu, dq.gpu, dk.gpu, dv.gpu, shape,
                          Tensor(), starts.gpu);
  require_match(dq, bf16_tol(), "attention dq");
  require_match(dk, bf16_tol(), "attention dk");
  require_match(dv, bf16_tol(), "attention dv");
}

TEST_CASE("cuda attention matches the CPU over awkward shapes and GQA", "[cuda][attention]") {
  // Sequence lengths around the 32-row tile, head dims at and between the 32/64/128/256 variants.
  for (Case c : {Case{1, 1, 1, 1, 64}, Case{2, 7, 4, 2, 16}, Case{1, 19, 3, 1, 40}, Case{2, 33, 4, 4, 64},
                 Case{1, 100, 6, 2, 128}, Case{1, 65, 2, 1, 256}, Case{3, 40, 2, 2, 8}, Case{1, 64, 4, 1, 32},
                 Case{1, 31, 2, 2, 96}, Case{1, 300, 12, 4, 64}}) {
    check_case(c, seed_of(21, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim}));
  }
}

TEST_CASE("cuda flash attention (head dims 64, 128) matches the CPU, causal and not", "[cuda][attention]") {
  // Sequences of 1, 7, one tile, not a multiple of any tile (989) and 1024; heads 3 and 6; GQA
  // ratios 1, 2, 3 and MQA (6 query heads on one kv head).
  for (Case c : {Case{1, 1, 1, 1, 64, true}, Case{1, 1, 2, 1, 128, false}, Case{2, 7, 3, 1, 64, true},
                 Case{2, 7, 6, 3, 128, false}, Case{1, 64, 6, 6, 64, false}, Case{1, 64, 3, 3, 128, true},
                 Case{1, 989, 3, 1, 64, true}, Case{1, 989, 6, 2, 128, false}, Case{1, 989, 6, 3, 64, false},
                 Case{1, 1024, 6, 1, 64, false}, Case{1, 1024, 6, 1, 128, true}, Case{2, 1024, 3, 3, 128, false},
                 Case{2, 1024, 6, 2, 64, true}}) {
    check_case(c, seed_of(23, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.causal}));
  }
}

TEST_CASE("cuda attention fallback head dims (40, 96) match the CPU, causal and not", "[cuda][attention]") {
  for (Case c : {Case{1, 989, 3, 1, 40, false}, Case{2, 7, 6, 2, 96, false}, Case{1, 100, 6, 2, 96, true},
                 Case{1, 130, 3, 3, 40, true}}) {
    check_case(c, seed_of(24, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.causal}));
  }
}

TEST_CASE("cuda cross-attention (kv_seq_len != seq_len) matches the CPU, flash and fallback head dims",
          "[cuda][attention]") {
  // Fewer and more keys than queries, key counts off every tile (32/64 forward, 128 backward,
  // 32 fallback); GQA and MQA; head dims 64 and 128 (flash) and 40 (fp32 fallback).
  for (Case c : {Case{2, 19, 4, 2, 64, false, 53}, Case{2, 19, 4, 2, 128, false, 53},
                 Case{1, 128, 6, 2, 64, false, 300}, Case{1, 128, 6, 3, 128, false, 300},
                 Case{1, 1000, 6, 1, 64, false, 77}, Case{1, 1000, 4, 2, 128, false, 77},
                 Case{3, 7, 2, 1, 64, false, 1}, Case{2, 19, 3, 1, 40, false, 53}, Case{1, 1000, 4, 2, 40, false, 77}}) {
    check_case(c, seed_of(25, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.kv_seq_len}));
  }
}

TEST_CASE("cuda document-masked attention matches the CPU (flash head dims 64, 128)", "[cuda][attention][documents]") {
  // Documents of ~mean tokens: short ones (many per key block), long ones (whole key blocks
  // skipped); GQA and MQA; sequences of 1, 7, not a multiple of any tile, and 1024.
  struct Documents {
    Case c;
    int64_t mean;
  };
  for (const Documents& d : {Documents{{1, 1, 2, 1, 64}, 1}, Documents{{2, 7, 3, 1, 64}, 2},
                             Documents{{1, 989, 6, 2, 64}, 40}, Documents{{2, 1024, 3, 3, 64}, 300},
                             Documents{{1, 989, 6, 3, 128}, 150}, Documents{{2, 1024, 6, 1, 128}, 30},
                             Documents{{1, 300, 2, 2, 128}, 500}}) {
    const Case& c = d.c;
    const uint64_t seed = seed_of(61, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, d.mean});
    check_case(c, seed, random_documents(c.batch, c.seq_len, d.mean, seed));
  }
}

TEST_CASE("cuda document-masked attention fallback head dims (16, 40, 96) match the CPU",
          "[cuda][attention][documents]") {
  for (const auto& [c, mean] : {std::pair<Case, int64_t>{{2, 7, 4, 2, 16}, 2}, {{1, 989, 3, 1, 40}, 60},
                                {{1, 130, 6, 2, 96}, 20}, {{2, 100, 3, 3, 40}, 200}}) {
    const uint64_t seed = seed_of(62, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, mean});
    check_case(c, seed, random_documents(c.batch, c.seq_len, mean, seed));
  }
  // Every token its own document: each attends to itself alone (out = its v), both kernel kinds.
  for (int64_t head_dim : {64, 40}) {
    check_case({1, 65, 2, 1, head_dim}, seed_of(63, {head_dim}), {std::vector<int>(65, 1)});
  }
}

TEST_CASE("cuda attention backward takes a caller workspace and names a short one", "[cuda][attention]") {
  const Case c{2, 77, 6, 2, 64, true};
  const ops::AttentionShape shape = shape_of(c);
  const int64_t tokens = c.batch * c.seq_len;
  // The flash backward's scratch: the fp32 dQ accumulator [B*S, Hq*hd] and delta [B, Hq, S]
  // (padded to 256 bytes): linear in S, never S x S.
  const int64_t numel = ops::attention_workspace_numel(shape, gpu());
  CHECK(numel == tokens * c.heads * c.head_dim + (c.batch * c.heads * c.seq_len + 63) / 64 * 64);
  Mirror q = random_mirror({tokens, c.heads * c.head_dim}, DType::bf16, 41, -2.0, 2.0);
  Mirror k = random_mirror({tokens, c.kv_heads * c.head_dim}, DType::bf16, 42, -2.0, 2.0);
  Mirror v = random_mirror({tokens, c.kv_heads * c.head_dim}, DType::bf16, 43);
  Mirror dout = random_mirror({tokens, c.heads * c.head_dim}, DType::bf16, 44);
  Tensor out = poisoned_on(q.gpu.shape(), DType::bf16, gpu()), lse = poisoned_on({2, 6, 77}, DType::f32, gpu());
  ops::attention_forward(q.gpu, k.gpu, v.gpu, out, lse, shape);
  Tensor dq = poisoned_on(q.gpu.shape(), DType::bf16, gpu()), dk = poisoned_on(k.gpu.shape(), DType::bf16, gpu()),
         dv = poisoned_on(v.gpu.shape(), DType::bf16, gpu());
  // A workspace full of NaN: its contents must not matter.
  Tensor workspace = poisoned_on({numel}, DType::f32, gpu());
  ops::attention_backward(q.gpu, k.gpu, v.gpu, out, lse, dout.gpu, dq, dk, dv, shape, workspace);
  Tensor dq_ref = poisoned_on(q.gpu.shape(), DType::bf16, gpu()), dk_ref = poisoned_on(k.gpu.shape(), DType::bf16, gpu()),
         dv_ref = poisoned_on(v.gpu.shape(), DType::bf16, gpu());
  ops::attention_backward(q.gpu, k.gpu, v.gpu, out, lse, dout.gpu, dq_ref, dk_ref, dv_ref, shape);
  require_close(dq, dq_ref, 1e-2, 1e-2, "dq with a caller workspace");  // dq: atomics add in varying order
  require_close(dk, dk_ref, 0.0, 0.0, "dk with a caller workspace");
  require_close(dv, dv_ref, 0.0, 0.0, "dv with a caller workspace");
  Tensor short_ws = Tensor::empty({numel - 1}, DType::f32, gpu());
  REQUIRE_THROWS_WITH(ops::attention_backward(q.gpu, k.gpu, v.gpu, out, lse, dout.gpu, dq, dk, dv, shape, short_ws),
                      Catch::Contains("attention workspace: " + std::to_string(numel - 1) +
                                      " elements, the backward needs " + std::to_string(numel)));
}

TEST_CASE("bench op attention times the flash kernels with CUDA events", "[cuda][attention][bench]") {
  OpBenchOptions o;
  o.batch = 2;
  o.seq_len = 256;
  o.heads = 4;
  o.head_dim = 128;
  o.warmup = 1;
  o.iters = 3;
  const nlohmann::json r = bench_op("attention", o, gpu());
  CHECK(r["device"] == gpu().str());
  for (const char* key : {"fwd_ms", "bwd_ms", "fwd_bwd_ms", "fwd_tflops", "bwd_tflops", "fwd_bwd_tflops"}) {
    CHECK(r[key].get<double>() > 0);
  }
}

TEST_CASE("cuda attention at GPT-2-small training shape matches the CPU on the last sequence",
          "[cuda][attention][slow]") {
  // B 16, S 1024, 12 heads of 64: the GPU runs the whole batch; the CPU checks the last
  // sequence (sequences are independent), which exercises the full launch grid.
  const Case c{16, 1024, 12, 12, 64};
  const ops::AttentionShape shape = shape_of(c);
  const int64_t tokens = c.batch * c.seq_len, width = c.heads * c.head_dim;
  const uint64_t seed = 22;
  Mirror q = random_mirror({tokens, width}, DType::bf16, seed, -2.0, 2.0);
  Mirror k = random_mirror({tokens, width}, DType::bf16, seed + 1, -2.0, 2.0);
  Mirror v = random_mirror({tokens, width}, DType::bf16, seed + 2);
  Mirror dout = random_mirror({tokens, width}, DType::bf16, seed + 3);
  Tensor out = poisoned_on({tokens, width}, DType::bf16, gpu());
  Tensor lse = poisoned_on({c.batch, c.heads, c.seq_len}, DType::f32, gpu());
  Tensor dq = poisoned_on({tokens, width}, DType::bf16, gpu());
  Tensor dk = poisoned_on({tokens, width}, DType::bf16, gpu());
  Tensor dv = poisoned_on({tokens, width}, DType::bf16, gpu());
  // The backward's documented scratch (fp32 dQ accumulator and delta), allocated by the caller.
  Tensor workspace = Tensor::empty({ops::attention_workspace_numel(shape, gpu())}, DType::f32, gpu());
  // Extra device memory beyond inputs, outputs and that workspace (stream-ordered pool high-water
  // mark): no [S, S] score matrix may appear (12 heads x 1024^2 floats per sequence would be 48 MiB).
  cuda_synchronize();
  cudaMemPool_t pool;
  REQUIRE(cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess);
  uint64_t used_before = 0, high = 0;
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used_before) == cudaSuccess);
  REQUIRE(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high) == cudaSuccess);  // reset
  ops::attention_forward(q.gpu, k.gpu, v.gpu, out, lse, shape);
  ops::attention_backward(q.gpu, k.gpu, v.gpu, out, lse, dout.gpu, dq, dk, dv, shape, workspace);
  cuda_synchronize();
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high) == cudaSuccess);
  const uint64_t extra = high > used_before ? high - used_before : 0;
  CHECK(extra <= (uint64_t{8} << 20));

  const int64_t first = (c.batch - 1) * c.seq_len;
  auto last = [&](const Tensor& t) { return t.rows(first, tokens); };
  ops::AttentionShape one = shape;
  one.batch = 1;
  Tensor out_ref = poisoned_on({c.seq_len, width}, DType::f32, Device::cpu());
  Tensor lse_ref = poisoned_on({1, c.heads, c.seq_len}, DType::f32, Device::cpu());
  ops::attention_forward(last(q.cpu), last(k.cpu), last(v.cpu), out_ref, lse_ref, one);
  require_close(last(out), out_ref, bf16_tol().atol, bf16_tol().rtol, "out (last sequence)");
  require_close(lse.rows(c.batch - 1, c.batch), lse_ref, accum_tol().atol, accum_tol().rtol, "lse (last sequence)");

  // The backward reference uses the GPU's own saved out and lse, as the GPU backward did.
  Tensor out_saved = Tensor::from_vector(last(out).to_vector<float>(), {c.seq_len, width}, DType::f32);
  Tensor lse_saved = Tensor::from_vector(lse.rows(c.batch - 1, c.batch).to_vector<float>(),
                                         {1, c.heads, c.seq_len}, DType::f32);
  Tensor dq_ref = poisoned_on({c.seq_len, width}, DType::f32, Device::cpu());
  Tensor dk_ref = poisoned_on({c.seq_len, width}, DType::f32, Device::cpu());
  Tensor dv_ref = poisoned_on({c.seq_len, width}, DType::f32, Device::cpu());
  ops::attention_backward(last(q.cpu), last(k.cpu), last(v.cpu), out_saved, lse_saved, last(dout.cpu), dq_ref, dk_ref,
                          dv_ref, one);
  require_close(last(dq), dq_ref, bf16_tol().atol, bf16_tol().rtol, "dq (last sequence)");
  require_close(last(dk), dk_ref, bf16_tol().atol, bf16_tol().rtol, "dk (last sequence)");
  require_close(last(dv), dv_ref, bf16_tol().atol, bf16_tol().rtol, "dv (last sequence)");
}

}  // namespace
}  // namespace moe::test

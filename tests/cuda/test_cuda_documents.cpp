// CUDA document masking and document positions vs the CPU reference: attention forward and
// backward (flash kernels and the fp32 fallback) masked to each token's document, rope and
// learned positions restarting at each document (ops doc_starts).
#include <catch2/catch.hpp>

#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

// Document lengths cutting each of `seqs` sequences of seq_len: seeded, between 1 and 2 * mean,
// with one-token documents mixed in.
std::vector<std::vector<int>> random_documents(int64_t seqs, int64_t seq_len, int64_t mean, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int>> docs(static_cast<size_t>(seqs));
  for (auto& row : docs) {
    int64_t left = seq_len;
    while (left > 0) {
      const int64_t want = rng() % 5 == 0 ? 1 : 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * mean));
      const int64_t length = std::min(want, left);
      row.push_back(static_cast<int>(length));
      left -= length;
    }
  }
  return docs;
}

Mirror starts_mirror(const std::vector<std::vector<int>>& docs, int64_t seq_len) {
  std::vector<int32_t> starts = document_starts_of(docs, seq_len);
  return mirror_ids(starts, {static_cast<int64_t>(starts.size())});
}

struct Case {
  int64_t batch, seq_len, heads, kv_heads, head_dim, mean_doc;
};

// Forward and backward on both backends from identical inputs and documents; the backward is fed
// the CPU forward's out (bf16-rounded) and lse on both sides.
void check_case(const Case& c, const std::vector<std::vector<int>>& docs, uint64_t seed) {
  INFO("batch " << c.batch << " seq " << c.seq_len << " heads " << c.heads << "/" << c.kv_heads << " hd "
                << c.head_dim << " documents of ~" << c.mean_doc);
  const ops::AttentionShape shape{c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, true};
  const int64_t tokens = c.batch * c.seq_len;
  const Mirror starts = starts_mirror(docs, c.seq_len);
  Mirror q = random_mirror({tokens, c.heads * c.head_dim}, DType::bf16, seed, -2.0, 2.0);
  Mirror k = random_mirror({tokens, c.kv_heads * c.head_dim}, DType::bf16, seed + 1, -2.0, 2.0);
  Mirror v = random_mirror({tokens, c.kv_heads * c.head_dim}, DType::bf16, seed + 2);
  Mirror out = poisoned_pair({tokens, c.heads * c.head_dim}, DType::bf16);
  Mirror lse = poisoned_pair({c.batch, c.heads, c.seq_len}, DType::f32);
  ops::attention_forward(q.cpu, k.cpu, v.cpu, out.cpu, lse.cpu, shape, starts.cpu);
  ops::attention_forward(q.gpu, k.gpu, v.gpu, out.gpu, lse.gpu, shape, starts.gpu);
  require_match(out, bf16_tol(), "document-masked attention out");
  require_match(lse, accum_tol(), "document-masked attention lse");

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
  require_match(dq, bf16_tol(), "document-masked attention dq");
  require_match(dk, bf16_tol(), "document-masked attention dk");
  require_match(dv, bf16_tol(), "document-masked attention dv");
}

}  // namespace

TEST_CASE("cuda document-masked attention matches the CPU (flash head dims 64, 128)", "[cuda][attention][documents]") {
  // Short documents (many per key block), long ones (whole key blocks skipped), GQA and MQA,
  // sequences of 1, 7, not a multiple of any tile, and 1024.
  for (Case c : {Case{1, 1, 2, 1, 64, 1}, Case{2, 7, 3, 1, 64, 2}, Case{1, 989, 6, 2, 64, 40},
                 Case{2, 1024, 3, 3, 64, 300}, Case{1, 989, 6, 3, 128, 150}, Case{2, 1024, 6, 1, 128, 30},
                 Case{1, 300, 2, 2, 128, 500}}) {
    const uint64_t seed = seed_of(61, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.mean_doc});
    check_case(c, random_documents(c.batch, c.seq_len, c.mean_doc, seed), seed);
  }
}

TEST_CASE("cuda document-masked attention fallback head dims (16, 40, 96) match the CPU",
          "[cuda][attention][documents]") {
  for (Case c : {Case{2, 7, 4, 2, 16, 2}, Case{1, 989, 3, 1, 40, 60}, Case{1, 130, 6, 2, 96, 20},
                 Case{2, 100, 3, 3, 40, 200}}) {
    const uint64_t seed = seed_of(62, {c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.mean_doc});
    check_case(c, random_documents(c.batch, c.seq_len, c.mean_doc, seed), seed);
  }
}

TEST_CASE("cuda document-masked attention with one-token documents attends each token to itself",
          "[cuda][attention][documents]") {
  // Every token its own document: out = v of the same token (its kv head), for both kernel kinds.
  for (int64_t head_dim : {64, 40}) {
    const Case c{1, 65, 2, 1, head_dim, 1};
    check_case(c, {std::vector<int>(65, 1)}, seed_of(63, {head_dim}));
  }
}

TEST_CASE("cuda rope and learned positions with document positions match the CPU", "[cuda][rope][positions]") {
  struct Shape2 {
    int64_t seqs, seq_len, heads, head_dim, mean_doc;
  };
  for (Shape2 c : {Shape2{1, 7, 3, 8, 2}, Shape2{2, 19, 2, 40, 5}, Shape2{3, 33, 12, 64, 10},
                   Shape2{1, 1024, 2, 64, 200}}) {
    INFO("seqs " << c.seqs << " seq_len " << c.seq_len << " heads " << c.heads << " hd " << c.head_dim);
    const uint64_t seed = seed_of(64, {c.seqs, c.seq_len, c.heads, c.head_dim});
    const Mirror starts = starts_mirror(random_documents(c.seqs, c.seq_len, c.mean_doc, seed), c.seq_len);
    const int64_t tokens = c.seqs * c.seq_len, dim = c.heads * c.head_dim;
    for (bool inverse : {false, true}) {
      Mirror x = random_mirror({tokens, dim}, DType::bf16, seed + (inverse ? 1 : 0));
      ops::rope(x.cpu, c.heads, c.seq_len, 10000.0f, inverse, starts.cpu);
      ops::rope(x.gpu, c.heads, c.seq_len, 10000.0f, inverse, starts.gpu);
      require_match(x, bf16_tol(), inverse ? "rope inverse, document positions" : "rope, document positions");
    }
    Mirror x = random_mirror({tokens, dim}, DType::bf16, seed + 2);
    Mirror pos = random_mirror({c.seq_len + 3, dim}, DType::bf16, seed + 3);
    ops::position_add_forward(x.cpu, pos.cpu, c.seq_len, starts.cpu);
    ops::position_add_forward(x.gpu, pos.gpu, c.seq_len, starts.gpu);
    require_match(x, bf16_tol(), "x + document positions");
    Mirror dx = random_mirror({tokens, dim}, DType::bf16, seed + 4);
    Mirror dpos = random_mirror({c.seq_len + 3, dim}, DType::f32, seed + 5);
    ops::position_add_backward(dx.cpu, dpos.cpu, c.seq_len, starts.cpu);
    ops::position_add_backward(dx.gpu, dpos.gpu, c.seq_len, starts.gpu);
    require_match(dpos, accum_tol(), "dpos, document positions");
  }
}

}  // namespace moe::test

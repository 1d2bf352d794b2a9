// CUDA backend vs CPU reference for the dense ops: matmul, embedding, positions, norms, rope,
// activations and cross-entropy (also over one vocabulary shard), forward and backward, over
// awkward sizes.
#include <algorithm>
#include <cmath>
#include <limits>

#include <catch2/catch.hpp>

#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/device_info.h"
#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

const int64_t k_rows[] = {1, 7, 19, 989};

TEST_CASE("cuda matmul matches the CPU for every transpose, bf16 and f32 outputs", "[cuda][matmul]") {
  struct Dims {
    int64_t m, n, k;
  };
  for (Dims d : {Dims{1, 1, 1}, Dims{7, 19, 13}, Dims{19, 7, 64}, Dims{989, 37, 200}, Dims{64, 130, 989},
                 Dims{5, 3, 0}}) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        INFO("m " << d.m << " n " << d.n << " k " << d.k << " trans_a " << ta << " trans_b " << tb);
        const uint64_t seed = seed_of(1, {d.m, d.n, d.k, ta, tb});
        Shape a_shape = ta ? Shape{d.k, d.m} : Shape{d.m, d.k};
        Shape b_shape = tb ? Shape{d.n, d.k} : Shape{d.k, d.n};
        Mirror a = random_mirror(a_shape, DType::bf16, seed);
        Mirror b = random_mirror(b_shape, DType::bf16, seed + 1);

        Mirror c = poisoned_pair({d.m, d.n}, DType::bf16);  // beta = 0 must not read c
        ops::matmul(a.cpu, ta, b.cpu, tb, c.cpu, 1.0f, 0.0f);
        ops::matmul(a.gpu, ta, b.gpu, tb, c.gpu, 1.0f, 0.0f);
        require_match(c, bf16_tol(), "c bf16, beta 0");

        Mirror acc = random_mirror({d.m, d.n}, DType::f32, seed + 2);  // gradient-style accumulate
        ops::matmul(a.cpu, ta, b.cpu, tb, acc.cpu, 0.5f, 1.0f);
        ops::matmul(a.gpu, ta, b.gpu, tb, acc.gpu, 0.5f, 1.0f);
        require_match(acc, accum_tol(), "c f32, alpha 0.5, beta 1");

        Mirror cb = random_mirror({d.m, d.n}, DType::bf16, seed + 3);
        ops::matmul(a.cpu, ta, b.cpu, tb, cb.cpu, 1.0f, 0.25f);
        ops::matmul(a.gpu, ta, b.gpu, tb, cb.gpu, 1.0f, 0.25f);
        require_match(cb, bf16_tol(), "c bf16, beta 0.25");
      }
    }
  }
}

TEST_CASE("cuda embedding forward and backward match the CPU", "[cuda][embedding]") {
  for (int64_t vocab : {1, 50, 1000}) {
    for (int64_t dim : {37, 64}) {
      for (int64_t tokens : k_rows) {
        INFO("vocab " << vocab << " dim " << dim << " tokens " << tokens);
        const uint64_t seed = seed_of(2, {vocab, dim, tokens});
        Mirror table = random_mirror({vocab, dim}, DType::bf16, seed);
        Mirror ids = mirror_ids(random_int_values(tokens, vocab, seed + 1), {tokens});
        Mirror out = poisoned_pair({tokens, dim}, DType::bf16);
        ops::embedding_forward(ids.cpu, table.cpu, out.cpu);
        ops::embedding_forward(ids.gpu, table.gpu, out.gpu);
        require_match(out, {0, 0}, "embedding rows are copies");

        Mirror dout = random_mirror({tokens, dim}, DType::bf16, seed + 2);
        Mirror dtable = random_mirror({vocab, dim}, DType::f32, seed + 3);  // accumulated into
        ops::embedding_backward(ids.cpu, dout.cpu, dtable.cpu);
        ops::embedding_backward(ids.gpu, dout.gpu, dtable.gpu);
        require_match(dtable, accum_tol(), "embedding dtable");
      }
    }
  }
}

TEST_CASE("cuda learned positions forward and backward match the CPU", "[cuda][positions]") {
  struct Case {
    int64_t seqs, seq_len, max_len, dim;
  };
  for (Case c : {Case{1, 1, 4, 37}, Case{1, 7, 7, 64}, Case{3, 19, 32, 37}, Case{23, 43, 64, 64},
                 Case{2, 5, 8, 13}}) {
    INFO("seqs " << c.seqs << " seq_len " << c.seq_len << " dim " << c.dim);
    const uint64_t seed = seed_of(3, {c.seqs, c.seq_len, c.max_len, c.dim});
    const int64_t tokens = c.seqs * c.seq_len;
    Mirror x = random_mirror({tokens, c.dim}, DType::bf16, seed);
    Mirror pos = random_mirror({c.max_len, c.dim}, DType::bf16, seed + 1);
    ops::position_add_forward(x.cpu, pos.cpu, c.seq_len);
    ops::position_add_forward(x.gpu, pos.gpu, c.seq_len);
    require_match(x, bf16_tol(), "x + positions");

    Mirror dx = random_mirror({tokens, c.dim}, DType::bf16, seed + 2);
    Mirror dpos = random_mirror({c.max_len, c.dim}, DType::f32, seed + 3);
    ops::position_add_backward(dx.cpu, dpos.cpu, c.seq_len);
    ops::position_add_backward(dx.gpu, dpos.gpu, c.seq_len);
    require_match(dpos, accum_tol(), "dpos");
  }
}

TEST_CASE("cuda rmsnorm forward and backward match the CPU", "[cuda][norms]") {
  for (int64_t dim : {1, 37, 64, 200, 1024}) {
    for (int64_t rows : k_rows) {
      INFO("rows " << rows << " dim " << dim);
      const uint64_t seed = seed_of(4, {rows, dim});
      Mirror x = random_mirror({rows, dim}, DType::bf16, seed, -2.0, 2.0);
      Mirror w = random_mirror({dim}, DType::bf16, seed + 1, 0.5, 1.5);
      Mirror y = poisoned_pair({rows, dim}, DType::bf16);
      Mirror rstd = poisoned_pair({rows}, DType::f32);
      ops::rmsnorm_forward(x.cpu, w.cpu, y.cpu, rstd.cpu, 1e-5f);
      ops::rmsnorm_forward(x.gpu, w.gpu, y.gpu, rstd.gpu, 1e-5f);
      require_match(y, bf16_tol(), "rmsnorm y");
      require_match(rstd, accum_tol(), "rmsnorm rstd");

      Mirror saved = mirror_of(rstd.cpu, DType::f32);
      Mirror dy = random_mirror({rows, dim}, DType::bf16, seed + 2);
      Mirror dx = poisoned_pair({rows, dim}, DType::bf16);
      Mirror dw = random_mirror({dim}, DType::f32, seed + 3);
      ops::rmsnorm_backward(x.cpu, w.cpu, saved.cpu, dy.cpu, dx.cpu, dw.cpu);
      ops::rmsnorm_backward(x.gpu, w.gpu, saved.gpu, dy.gpu, dx.gpu, dw.gpu);
      require_match(dx, bf16_tol(), "rmsnorm dx");
      require_match(dw, accum_tol(), "rmsnorm dw");
    }
  }
}

TEST_CASE("cuda layernorm forward and backward match the CPU", "[cuda][norms]") {
  for (int64_t dim : {1, 37, 64, 200, 1024}) {
    for (int64_t rows : k_rows) {
      INFO("rows " << rows << " dim " << dim);
      const uint64_t seed = seed_of(5, {rows, dim});
      Mirror x = random_mirror({rows, dim}, DType::bf16, seed, 1.0, 4.0);  // a large mean
      Mirror w = random_mirror({dim}, DType::bf16, seed + 1, 0.5, 1.5);
      Mirror b = random_mirror({dim}, DType::bf16, seed + 2);
      Mirror y = poisoned_pair({rows, dim}, DType::bf16);
      Mirror mean = poisoned_pair({rows}, DType::f32);
      Mirror rstd = poisoned_pair({rows}, DType::f32);
      ops::layernorm_forward(x.cpu, w.cpu, b.cpu, y.cpu, mean.cpu, rstd.cpu, 1e-5f);
      ops::layernorm_forward(x.gpu, w.gpu, b.gpu, y.gpu, mean.gpu, rstd.gpu, 1e-5f);
      require_match(y, bf16_tol(), "layernorm y");
      require_match(mean, accum_tol(), "layernorm mean");
      require_match(rstd, accum_tol(), "layernorm rstd");

      Mirror saved_mean = mirror_of(mean.cpu, DType::f32), saved_rstd = mirror_of(rstd.cpu, DType::f32);
      Mirror dy = random_mirror({rows, dim}, DType::bf16, seed + 3);
      Mirror dx = poisoned_pair({rows, dim}, DType::bf16);
      Mirror dw = random_mirror({dim}, DType::f32, seed + 4);
      Mirror db = random_mirror({dim}, DType::f32, seed + 5);
      ops::layernorm_backward(x.cpu, w.cpu, saved_mean.cpu, saved_rstd.cpu, dy.cpu, dx.cpu, dw.cpu, db.cpu);
      ops::layernorm_backward(x.gpu, w.gpu, saved_mean.gpu, saved_rstd.gpu, dy.gpu, dx.gpu, dw.gpu, db.gpu);
      require_match(dx, bf16_tol(), "layernorm dx");
      require_match(dw, accum_tol(), "layernorm dw");
      require_match(db, accum_tol(), "layernorm db");
    }
  }
}

TEST_CASE("cuda rope matches the CPU forward and inverse", "[cuda][rope]") {
  struct Case {
    int64_t seqs, seq_len, heads, head_dim;
  };
  for (Case c : {Case{1, 1, 1, 2}, Case{1, 7, 3, 8}, Case{2, 19, 2, 40}, Case{1, 1024, 2, 64}, Case{3, 33, 12, 64},
                 Case{1, 5, 1, 256}, Case{2, 9, 6, 16}}) {
    for (bool inverse : {false, true}) {
      INFO("seqs " << c.seqs << " seq_len " << c.seq_len << " heads " << c.heads << " hd " << c.head_dim
                   << " inverse " << inverse);
      const uint64_t seed = seed_of(6, {c.seqs, c.seq_len, c.heads, c.head_dim, inverse});
      Mirror x = random_mirror({c.seqs * c.seq_len, c.heads * c.head_dim}, DType::bf16, seed);
      ops::rope(x.cpu, c.heads, c.seq_len, 10000.0f, inverse);
      ops::rope(x.gpu, c.heads, c.seq_len, 10000.0f, inverse);
      require_match(x, bf16_tol(), "rope");
    }
  }
}

TEST_CASE("cuda rope and learned positions with document positions match the CPU", "[cuda][rope][positions]") {
  struct Case {
    int64_t seqs, seq_len, heads, head_dim, mean_doc;
  };
  for (Case c : {Case{1, 7, 3, 8, 2}, Case{2, 19, 2, 40, 5}, Case{3, 33, 12, 64, 10}, Case{1, 1024, 2, 64, 200}}) {
    INFO("seqs " << c.seqs << " seq_len " << c.seq_len << " heads " << c.heads << " hd " << c.head_dim);
    const uint64_t seed = seed_of(64, {c.seqs, c.seq_len, c.heads, c.head_dim});
    const Mirror starts = document_starts_mirror(random_documents(c.seqs, c.seq_len, c.mean_doc, seed), c.seq_len);
    const int64_t tokens = c.seqs * c.seq_len, dim = c.heads * c.head_dim;
    for (bool inverse : {false, true}) {
      Mirror x = random_mirror({tokens, dim}, DType::bf16, seed + (inverse ? 1 : 0));
      ops::rope(x.cpu, c.heads, c.seq_len, 10000.0f, inverse, starts.cpu);
      ops::rope(x.gpu, c.heads, c.seq_len, 10000.0f, inverse, starts.gpu);
      require_match(x, bf16_tol(), inverse ? "rope inverse, document positions" : "rope, document positions");
    }
    // Positions: a table longer than seq_len; the backward's atomic sums over the documents' tokens.
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

TEST_CASE("cuda activations forward and backward match the CPU", "[cuda][activations]") {
  for (ops::Activation act :
       {ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu}) {
    for (int64_t width : {1, 37, 64}) {
      for (int64_t rows : k_rows) {
        INFO(ops::activation_name(act) << " rows " << rows << " width " << width);
        const uint64_t seed = seed_of(7, {static_cast<int64_t>(act), rows, width});
        const int64_t in_width = ops::is_gated(act) ? 2 * width : width;
        Mirror x = random_mirror({rows, in_width}, DType::bf16, seed, -3.0, 3.0);
        Mirror y = poisoned_pair({rows, width}, DType::bf16);
        ops::activation_forward(act, x.cpu, y.cpu);
        ops::activation_forward(act, x.gpu, y.gpu);
        require_match(y, bf16_tol(), "activation y");

        Mirror dy = random_mirror({rows, width}, DType::bf16, seed + 1);
        Mirror dx = poisoned_pair({rows, in_width}, DType::bf16);
        ops::activation_backward(act, x.cpu, dy.cpu, dx.cpu);
        ops::activation_backward(act, x.gpu, dy.gpu, dx.gpu);
        require_match(dx, bf16_tol(), "activation dx");
      }
    }
  }
}

TEST_CASE("cuda weighted activation backward matches the CPU", "[cuda][activations]") {
  for (ops::Activation act :
       {ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu}) {
    for (int64_t width : {1, 37, 64, 384}) {
      for (int64_t rows : k_rows) {
        INFO(ops::activation_name(act) << " rows " << rows << " width " << width);
        const uint64_t seed = seed_of(9, {static_cast<int64_t>(act), rows, width});
        const int64_t in_width = ops::is_gated(act) ? 2 * width : width;
        Mirror x = random_mirror({rows, in_width}, DType::bf16, seed, -3.0, 3.0);
        Mirror g = random_mirror({rows, width}, DType::bf16, seed + 1);
        Mirror w = random_mirror({rows}, DType::f32, seed + 2, 0.0, 1.0);
        Mirror dx = poisoned_pair({rows, in_width}, DType::bf16), aw = poisoned_pair({rows, width}, DType::bf16);
        Mirror dw = poisoned_pair({rows}, DType::f32);
        ops::activation_backward_weighted(act, x.cpu, g.cpu, w.cpu, dx.cpu, aw.cpu, dw.cpu);
        ops::activation_backward_weighted(act, x.gpu, g.gpu, w.gpu, dx.gpu, aw.gpu, dw.gpu);
        require_match(dx, bf16_tol(), "weighted activation dx");
        require_match(aw, bf16_tol(), "weighted activation w * a");
        // <g, a> over up to 384 terms of bf16-rounded inputs, summed in fp32 on the GPU
        require_match(dw, Tolerance{2e-2, 1e-2}, "weighted activation <g, a>");
        // In place, as the grouped experts call it: w * a written over g.
        Tensor g_in_place = g.gpu.clone(), dx_in_place = poisoned_on({rows, in_width}, DType::bf16, gpu());
        Tensor dw_in_place = poisoned_on({rows}, DType::f32, gpu());
        ops::activation_backward_weighted(act, x.gpu, g_in_place, w.gpu, dx_in_place, g_in_place, dw_in_place);
        require_close(g_in_place, aw.gpu, 0, 0, "in-place w * a");
        require_close(dx_in_place, dx.gpu, 0, 0, "in-place dx");
        require_close(dw_in_place, dw.gpu, 0, 0, "in-place <g, a>");
        // Unit weights and no row gradient (activation_backward_and_output): activation_backward's
        // dx and the forward's output.
        Mirror dx_plain = poisoned_pair({rows, in_width}, DType::bf16), y_again = poisoned_pair({rows, width}, DType::bf16);
        ops::activation_backward_and_output(act, x.cpu, g.cpu, dx_plain.cpu, y_again.cpu);
        ops::activation_backward_and_output(act, x.gpu, g.gpu, dx_plain.gpu, y_again.gpu);
        require_match(dx_plain, bf16_tol(), "activation_backward_and_output dx");
        require_match(y_again, bf16_tol(), "activation_backward_and_output y");
      }
    }
  }
}

TEST_CASE("cuda cross-entropy forward and backward match the CPU", "[cuda][cross_entropy]") {
  struct Case {
    int64_t rows, vocab;
  };
  for (Case c : {Case{1, 50304}, Case{7, 1001}, Case{19, 50304}, Case{989, 1000}, Case{3, 1}}) {
    INFO("rows " << c.rows << " vocab " << c.vocab);
    const uint64_t seed = seed_of(8, {c.rows, c.vocab});
    Mirror logits = random_mirror({c.rows, c.vocab}, DType::bf16, seed, -8.0, 8.0);
    std::vector<int32_t> targets = random_int_values(c.rows, c.vocab, seed + 1);
    for (size_t i = 3; i < targets.size(); i += 4) targets[i] = -1;  // ignored rows
    Mirror tgt = mirror_ids(targets, {c.rows});
    Mirror loss = poisoned_pair({c.rows}, DType::f32);
    Mirror lse = poisoned_pair({c.rows}, DType::f32);
    ops::cross_entropy_forward(logits.cpu, tgt.cpu, loss.cpu, lse.cpu);
    ops::cross_entropy_forward(logits.gpu, tgt.gpu, loss.gpu, lse.gpu);
    require_match(loss, accum_tol(), "cross-entropy loss");
    require_match(lse, accum_tol(), "cross-entropy lse");

    Mirror saved_lse = mirror_of(lse.cpu, DType::f32);
    Mirror dlogits = poisoned_pair({c.rows, c.vocab}, DType::bf16);
    const float scale = 1.0f / static_cast<float>(c.rows);
    ops::cross_entropy_backward(logits.cpu, tgt.cpu, saved_lse.cpu, scale, dlogits.cpu);
    ops::cross_entropy_backward(logits.gpu, tgt.gpu, saved_lse.gpu, scale, dlogits.gpu);
    // Softmax entries of a 50k vocabulary are tiny: compare relatively (bf16 rounding is 2^-9).
    require_match(dlogits, {1e-9, 1e-2}, "cross-entropy dlogits");

    // In place (the model's head writes the gradient over its logits): the same values.
    Tensor in_place = logits.gpu.clone();
    ops::cross_entropy_backward(in_place, tgt.gpu, saved_lse.gpu, scale, in_place);
    REQUIRE(in_place.to(Device::cpu()).to_vector<float>() == dlogits.gpu.to(Device::cpu()).to_vector<float>());
  }
}

// Forward and backward at once (the model's head): each row staged in shared memory where it fits
// (vocab 50304; 8 and 1000 rows), the two kernels otherwise (vocab 1001: not 16-byte vectors;
// 131072: 256 KB, past any multiprocessor's shared memory). Ignored rows; out of place, and in
// place (dlogits over the logits) with the same values.
TEST_CASE("cuda cross-entropy forward and backward at once match the CPU", "[cuda][cross_entropy]") {
  struct Case {
    int64_t rows, vocab;
  };
  for (Case c : {Case{8, 50304}, Case{1000, 1000}, Case{7, 1001}, Case{5, 131072}}) {
    INFO("rows " << c.rows << " vocab " << c.vocab);
    const uint64_t seed = seed_of(81, {c.rows, c.vocab});
    // Row 2's first 16 logits are -inf (masked columns: whole 8-wide chunks of no probability).
    std::vector<float> values = random_mirror({c.rows, c.vocab}, DType::bf16, seed, -8.0, 8.0).cpu.to_vector<float>();
    std::fill_n(values.begin() + 2 * c.vocab, 16, -std::numeric_limits<float>::infinity());
    Mirror logits = mirror_values(values, {c.rows, c.vocab}, DType::bf16);
    std::vector<int32_t> targets = random_int_values(c.rows, c.vocab, seed + 1);
    for (size_t i = 3; i < targets.size(); i += 4) targets[i] = -1;  // ignored rows
    targets[2] = static_cast<int32_t>(16 + targets[2] % (c.vocab - 16));  // a column with a probability
    Mirror tgt = mirror_ids(targets, {c.rows});
    const float scale = 1.0f / static_cast<float>(c.rows);
    Mirror loss = poisoned_pair({c.rows}, DType::f32), lse = poisoned_pair({c.rows}, DType::f32);
    Mirror dlogits = poisoned_pair({c.rows, c.vocab}, DType::bf16);
    ops::cross_entropy_forward(logits.cpu, tgt.cpu, loss.cpu, lse.cpu);
    ops::cross_entropy_backward(logits.cpu, tgt.cpu, lse.cpu, scale, dlogits.cpu);
    ops::cross_entropy_with_grad(logits.gpu, tgt.gpu, loss.gpu, lse.gpu, scale, dlogits.gpu);
    require_match(loss, accum_tol(), "loss");
    require_match(lse, accum_tol(), "lse");
    require_match(dlogits, {1e-9, 1e-2}, "dlogits");

    // The staged kernel runs exactly where expected (zero rows: the path is chosen, nothing runs),
    // and gives the two kernels' values bit for bit: same chunks per thread, same merge order.
    const bool fits = c.vocab * 2 + 128 <= cuda::max_shared_bytes_per_block();  // + block_merge's 128 bytes
    const bool staged = c.vocab % 8 == 0 && fits;
    REQUIRE(cuda::cross_entropy_with_grad(static_cast<const __nv_bfloat16*>(logits.gpu.data()),
                                          static_cast<const int32_t*>(tgt.gpu.data()), nullptr, nullptr, scale,
                                          static_cast<__nv_bfloat16*>(dlogits.gpu.data()), 0, c.vocab,
                                          nullptr) == staged);
    if (staged) {
      Mirror loss2 = poisoned_pair({c.rows}, DType::f32), lse2 = poisoned_pair({c.rows}, DType::f32);
      Mirror dlogits2 = poisoned_pair({c.rows, c.vocab}, DType::bf16);
      ops::cross_entropy_forward(logits.gpu, tgt.gpu, loss2.gpu, lse2.gpu);
      ops::cross_entropy_backward(logits.gpu, tgt.gpu, lse2.gpu, scale, dlogits2.gpu);
      REQUIRE(loss.gpu.to(Device::cpu()).to_vector<float>() == loss2.gpu.to(Device::cpu()).to_vector<float>());
      REQUIRE(lse.gpu.to(Device::cpu()).to_vector<float>() == lse2.gpu.to(Device::cpu()).to_vector<float>());
      REQUIRE(dlogits.gpu.to(Device::cpu()).to_vector<float>() == dlogits2.gpu.to(Device::cpu()).to_vector<float>());
    }

    Tensor in_place = logits.gpu.clone();
    ops::cross_entropy_with_grad(in_place, tgt.gpu, loss.gpu, lse.gpu, scale, in_place);
    REQUIRE(in_place.to(Device::cpu()).to_vector<float>() == dlogits.gpu.to(Device::cpu()).to_vector<float>());
  }
}

// One vocabulary shard: rows / columns [start, start + local) of a vocabulary of `full` ids.
struct ShardCase {
  int64_t local, start, full;
};

TEST_CASE("cuda vocabulary-sharded embedding matches the CPU", "[cuda][embedding]") {
  for (ShardCase c : {ShardCase{17, 20, 50}, ShardCase{250, 500, 1000}, ShardCase{1, 6, 7}, ShardCase{19, 0, 57}}) {
    for (int64_t dim : {37, 64}) {
      for (int64_t tokens : k_rows) {
        INFO("shard [" << c.start << "," << c.start + c.local << ") of " << c.full << " dim " << dim << " tokens "
                       << tokens);
        const uint64_t seed = seed_of(9, {c.local, c.start, c.full, dim, tokens});
        const ops::VocabShard shard{c.start, c.full};
        Mirror table = random_mirror({c.local, dim}, DType::bf16, seed);
        Mirror ids = mirror_ids(random_int_values(tokens, c.full, seed + 1), {tokens});
        Mirror out = poisoned_pair({tokens, dim}, DType::bf16);
        ops::embedding_forward(ids.cpu, table.cpu, out.cpu, shard);
        ops::embedding_forward(ids.gpu, table.gpu, out.gpu, shard);
        require_match(out, {0, 0}, "sharded embedding rows are copies or zeros");

        Mirror dout = random_mirror({tokens, dim}, DType::bf16, seed + 2);
        Mirror dtable = random_mirror({c.local, dim}, DType::f32, seed + 3);  // accumulated into
        ops::embedding_backward(ids.cpu, dout.cpu, dtable.cpu, shard);
        ops::embedding_backward(ids.gpu, dout.gpu, dtable.gpu, shard);
        require_match(dtable, accum_tol(), "sharded embedding dtable");
      }
    }
  }
  // Ids outside the whole vocabulary cannot raise on the GPU: they give NaN rows (ids of other
  // shards give zero rows).
  const int64_t dim = 8;
  Tensor table = random_tensor({4, dim}, DType::bf16, 90, gpu());
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{-1, 10, 0, 5}, {4}, DType::i32, gpu());
  Tensor out = poisoned_on({4, dim}, DType::bf16, gpu());
  ops::embedding_forward(ids, table, out, {4, 10});
  const auto ov = out.to_vector<double>(), tv = table.to_vector<double>();
  for (int64_t i = 0; i < dim; ++i) {
    REQUIRE(std::isnan(ov[0 * dim + i]));
    REQUIRE(std::isnan(ov[1 * dim + i]));
    REQUIRE(ov[2 * dim + i] == 0.0);
    REQUIRE(ov[3 * dim + i] == tv[1 * dim + i]);
  }
}

TEST_CASE("cuda vocabulary-sharded cross-entropy matches the CPU", "[cuda][cross_entropy]") {
  struct Case {
    int64_t rows;
    ShardCase shard;
  };
  for (Case c : {Case{1, {12576, 25152, 50304}}, Case{7, {1001, 1001, 3003}}, Case{19, {12576, 0, 50304}},
                 Case{989, {250, 750, 1000}}, Case{3, {1, 2, 3}}}) {
    const ShardCase& sc = c.shard;
    INFO("rows " << c.rows << " shard [" << sc.start << "," << sc.start + sc.local << ") of " << sc.full);
    const uint64_t seed = seed_of(10, {c.rows, sc.local, sc.start, sc.full});
    const ops::VocabShard shard{sc.start, sc.full};
    Mirror logits = random_mirror({c.rows, sc.local}, DType::bf16, seed, -8.0, 8.0);
    std::vector<int32_t> targets = random_int_values(c.rows, sc.full, seed + 1);
    for (size_t i = 3; i < targets.size(); i += 4) targets[i] = -1;  // ignored rows
    // Rows 0 and 1 (where present) target the first and last local column.
    if (!targets.empty()) targets[0] = static_cast<int32_t>(sc.start);
    if (targets.size() > 1) targets[1] = static_cast<int32_t>(sc.start + sc.local - 1);
    Mirror tgt = mirror_ids(targets, {c.rows});
    Mirror loss = poisoned_pair({c.rows}, DType::f32);
    Mirror lse = poisoned_pair({c.rows}, DType::f32);
    ops::cross_entropy_forward(logits.cpu, tgt.cpu, loss.cpu, lse.cpu, shard);
    ops::cross_entropy_forward(logits.gpu, tgt.gpu, loss.gpu, lse.gpu, shard);
    require_match(loss, accum_tol(), "sharded cross-entropy loss");
    require_match(lse, accum_tol(), "sharded cross-entropy lse");

    // The backward takes the lse over the whole vocabulary: larger than the local one.
    std::vector<float> global_lse = lse.cpu.to_vector<float>();
    for (auto& v : global_lse) v += 0.75f;
    Mirror saved_lse = mirror_values(global_lse, {c.rows}, DType::f32);
    Mirror dlogits = poisoned_pair({c.rows, sc.local}, DType::bf16);
    const float scale = 1.0f / static_cast<float>(c.rows);
    ops::cross_entropy_backward(logits.cpu, tgt.cpu, saved_lse.cpu, scale, dlogits.cpu, shard);
    ops::cross_entropy_backward(logits.gpu, tgt.gpu, saved_lse.gpu, scale, dlogits.gpu, shard);
    require_match(dlogits, {1e-9, 1e-2}, "sharded cross-entropy dlogits");
  }
}

}  // namespace
}  // namespace moe::test

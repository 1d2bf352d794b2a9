// Forward of every dense CPU op (f32 and f64) against a direct formula written here: gemm,
// embedding, positions, norms, rope, attention, activations, cross-entropy, elementwise, rows.
#include <cmath>
#include <complex>
#include <limits>

#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;

namespace {

const DType k_float_types[] = {DType::f32, DType::f64};

void check(const Tensor& got, const std::vector<double>& ref, const std::string& what) {
  Tolerance tol = tolerance_for(got.dtype());
  require_close(values_of(got), ref, tol.atol, tol.rtol, what + " " + dtype_name(got.dtype()));
}

}  // namespace

TEST_CASE("matmul matches a triple loop for every transpose combination and beta", "[kernels][cpu]") {
  struct Size {
    int64_t m, n, k;
  };
  for (DType dt : k_float_types) {
    for (Size s : {Size{7, 19, 5}, Size{1, 7, 19}, Size{19, 1, 1}}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          for (double beta : {0.0, 0.5}) {
            Tensor a = random_tensor(ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, dt, 1);
            Tensor b = random_tensor(tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, dt, 2);
            Tensor c = beta == 0 ? poisoned({s.m, s.n}, dt) : random_tensor({s.m, s.n}, dt, 3);
            auto av = values_of(a), bv = values_of(b), c0 = values_of(c);
            const double alpha = 1.25;
            ops::matmul(a, ta, b, tb, c, static_cast<float>(alpha), static_cast<float>(beta));
            std::vector<double> ref(static_cast<size_t>(s.m * s.n));
            for (int64_t i = 0; i < s.m; ++i) {
              for (int64_t j = 0; j < s.n; ++j) {
                double acc = 0;
                for (int64_t p = 0; p < s.k; ++p) {
                  double x = ta ? av[p * s.m + i] : av[i * s.k + p];
                  double y = tb ? bv[j * s.k + p] : bv[p * s.n + j];
                  acc += x * y;
                }
                double prev = beta == 0 ? 0.0 : beta * c0[i * s.n + j];
                ref[i * s.n + j] = alpha * acc + prev;
              }
            }
            check(c, ref,
                  "matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " beta=" + std::to_string(beta) +
                      " m=" + std::to_string(s.m));
          }
        }
      }
    }
  }
}

TEST_CASE("embedding and learned positions are row copies and adds", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    const int64_t vocab = 11, dim = 7, tokens = 19;
    Tensor table = random_tensor({vocab, dim}, dt, 4);
    Tensor ids = random_ids(tokens, vocab, 5);
    Tensor out = poisoned({tokens, dim}, dt);
    ops::embedding_forward(ids, table, out);
    auto tv = values_of(table);
    auto iv = ids.to_vector<int32_t>();
    std::vector<double> ref;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < dim; ++i) ref.push_back(tv[iv[t] * dim + i]);
    }
    check(out, ref, "embedding");

    const int64_t seq_len = 7, max_len = 9, rows = 3 * seq_len;
    Tensor x = random_tensor({rows, dim}, dt, 6);
    Tensor pos = random_tensor({max_len, dim}, dt, 7);
    auto xv = values_of(x), pv = values_of(pos);
    ops::position_add_forward(x, pos, seq_len);
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t i = 0; i < dim; ++i) xv[t * dim + i] += pv[(t % seq_len) * dim + i];
    }
    check(x, xv, "positions");
  }
}

TEST_CASE("rmsnorm and layernorm match their definitions", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    for (int64_t rows : {1, 7, 19}) {
      const int64_t dim = 19;
      const float eps = 1e-5f;
      Tensor x = random_tensor({rows, dim}, dt, 8, Device::cpu(), -2.0, 3.0);
      Tensor w = random_tensor({dim}, dt, 9), b = random_tensor({dim}, dt, 10);
      auto xv = values_of(x), wv = values_of(w), bv = values_of(b);
      Tensor y = poisoned({rows, dim}, dt), rstd = poisoned({rows}, dt), mean = poisoned({rows}, dt);

      ops::rmsnorm_forward(x, w, y, rstd, eps);
      std::vector<double> ref_y, ref_rstd;
      for (int64_t r = 0; r < rows; ++r) {
        double ms = 0;
        for (int64_t i = 0; i < dim; ++i) ms += xv[r * dim + i] * xv[r * dim + i] / dim;
        double rms = std::sqrt(ms + static_cast<double>(eps));
        ref_rstd.push_back(1.0 / rms);
        for (int64_t i = 0; i < dim; ++i) ref_y.push_back(xv[r * dim + i] / rms * wv[i]);
      }
      check(y, ref_y, "rmsnorm y");
      check(rstd, ref_rstd, "rmsnorm rstd");

      ops::layernorm_forward(x, w, b, y, mean, rstd, eps);
      std::vector<double> ref_mean;
      ref_y.clear();
      ref_rstd.clear();
      for (int64_t r = 0; r < rows; ++r) {
        double mu = 0, var = 0;
        for (int64_t i = 0; i < dim; ++i) mu += xv[r * dim + i] / dim;
        for (int64_t i = 0; i < dim; ++i) var += (xv[r * dim + i] - mu) * (xv[r * dim + i] - mu) / dim;
        double sd = std::sqrt(var + static_cast<double>(eps));
        ref_mean.push_back(mu);
        ref_rstd.push_back(1.0 / sd);
        for (int64_t i = 0; i < dim; ++i) ref_y.push_back((xv[r * dim + i] - mu) / sd * wv[i] + bv[i]);
      }
      check(y, ref_y, "layernorm y");
      check(mean, ref_mean, "layernorm mean");
      check(rstd, ref_rstd, "layernorm rstd");
    }
  }
}

TEST_CASE("rope rotates half-split pairs by pos * theta^(-2i/hd) and inverse undoes it", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    const int64_t heads = 3, hd = 8, seq_len = 7, rows = 2 * seq_len;
    const double theta = 10000.0;
    Tensor x = random_tensor({rows, heads * hd}, dt, 11);
    auto xv = values_of(x);
    ops::rope(x, heads, seq_len, static_cast<float>(theta), false);
    std::vector<double> ref(xv.size());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < hd / 2; ++i) {
          // As a complex number (x_i + j x_{i+hd/2}) multiplied by exp(j * angle).
          double angle = static_cast<double>(r % seq_len) / std::pow(theta, 2.0 * i / hd);
          size_t lo = r * heads * hd + h * hd + i, hi = lo + hd / 2;
          std::complex<double> z(xv[lo], xv[hi]);
          z *= std::polar(1.0, angle);
          ref[lo] = z.real();
          ref[hi] = z.imag();
        }
      }
    }
    check(x, ref, "rope");
    ops::rope(x, heads, seq_len, static_cast<float>(theta), true);
    check(x, xv, "rope inverse");
  }
}

namespace {

// Naive GQA attention: full score matrix (with a -inf mask above the diagonal when causal), softmax, P @ V.
// Cross-attention when s.kv_len() != S: the S queries of sequence b read its Skv keys.
void naive_attention(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                     const ops::AttentionShape& s, std::vector<double>& out, std::vector<double>& lse) {
  const int64_t S = s.seq_len, Skv = s.kv_len(), hd = s.head_dim, qw = s.num_heads * hd, kw = s.num_kv_heads * hd;
  out.assign(static_cast<size_t>(s.batch * S * qw), 0.0);
  lse.assign(static_cast<size_t>(s.batch * s.num_heads * S), 0.0);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.num_heads; ++h) {
      int64_t g = h / (s.num_heads / s.num_kv_heads);
      for (int64_t i = 0; i < S; ++i) {
        std::vector<double> score(static_cast<size_t>(Skv));
        for (int64_t j = 0; j < Skv; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < hd; ++c) dot += q[(b * S + i) * qw + h * hd + c] * k[(b * Skv + j) * kw + g * hd + c];
          const bool visible = !s.causal || j <= i;
          score[j] = visible ? dot / std::sqrt(static_cast<double>(hd)) : -std::numeric_limits<double>::infinity();
        }
        double total = 0;
        for (double sc : score) total += std::exp(sc);
        lse[(b * s.num_heads + h) * S + i] = std::log(total);
        for (int64_t j = 0; j < Skv; ++j) {
          double p = std::exp(score[j]) / total;
          for (int64_t c = 0; c < hd; ++c) out[(b * S + i) * qw + h * hd + c] += p * v[(b * Skv + j) * kw + g * hd + c];
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("attention matches a naive (masked) softmax(QK^T/sqrt(hd)) V, causal, not, and cross", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    for (ops::AttentionShape s :
         {ops::AttentionShape{2, 7, 4, 2, 8}, ops::AttentionShape{1, 1, 1, 1, 4}, ops::AttentionShape{1, 19, 3, 3, 6},
          ops::AttentionShape{3, 5, 4, 1, 2}, ops::AttentionShape{2, 150, 2, 1, 4},  // 150: several row blocks
          ops::AttentionShape{2, 7, 4, 2, 8, false}, ops::AttentionShape{1, 1, 1, 1, 4, false},
          ops::AttentionShape{3, 5, 4, 1, 2, false}, ops::AttentionShape{2, 150, 2, 1, 4, false},
          // cross-attention: fewer and more keys than queries, several row blocks, one key
          ops::AttentionShape{2, 7, 4, 2, 8, false, 19}, ops::AttentionShape{2, 19, 4, 1, 4, false, 7},
          ops::AttentionShape{1, 150, 2, 1, 4, false, 3}, ops::AttentionShape{2, 3, 2, 2, 4, false, 1}}) {
      const int64_t kv_rows = s.batch * s.kv_len();
      Tensor q = random_tensor({s.batch * s.seq_len, s.num_heads * s.head_dim}, dt, 12, Device::cpu(), -2.0, 2.0);
      Tensor k = random_tensor({kv_rows, s.num_kv_heads * s.head_dim}, dt, 13, Device::cpu(), -2.0, 2.0);
      Tensor v = random_tensor({kv_rows, s.num_kv_heads * s.head_dim}, dt, 14);
      Tensor out = poisoned(q.shape(), dt), lse = poisoned({s.batch, s.num_heads, s.seq_len}, dt);
      ops::attention_forward(q, k, v, out, lse, s);
      std::vector<double> ref_out, ref_lse;
      naive_attention(values_of(q), values_of(k), values_of(v), s, ref_out, ref_lse);
      std::string what = "attention S=" + std::to_string(s.seq_len) + " Hq=" + std::to_string(s.num_heads) +
                         " Hkv=" + std::to_string(s.num_kv_heads) + (s.causal ? " causal" : " non-causal") +
                         " Skv=" + std::to_string(s.kv_len());
      check(out, ref_out, what + " out");
      check(lse, ref_lse, what + " lse");
    }
  }
}

TEST_CASE("attention with kv_seq_len = seq_len is self-attention, bit for bit", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    ops::AttentionShape self{2, 70, 4, 2, 8, false}, cross = self;
    cross.kv_seq_len = self.seq_len;
    const int64_t rows = self.batch * self.seq_len;
    Tensor q = random_tensor({rows, 32}, dt, 16, Device::cpu(), -2.0, 2.0);
    Tensor k = random_tensor({rows, 16}, dt, 17, Device::cpu(), -2.0, 2.0), v = random_tensor({rows, 16}, dt, 18);
    Tensor dout = random_tensor({rows, 32}, dt, 19);
    std::vector<std::vector<double>> results[2];
    for (int run = 0; run < 2; ++run) {
      const ops::AttentionShape& s = run == 0 ? self : cross;
      Tensor out = poisoned(q.shape(), dt), lse = poisoned({2, 4, 70}, dt);
      Tensor dq = poisoned(q.shape(), dt), dk = poisoned(k.shape(), dt), dv = poisoned(v.shape(), dt);
      ops::attention_forward(q, k, v, out, lse, s);
      ops::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, s);
      results[run] = {values_of(out), values_of(lse), values_of(dq), values_of(dk), values_of(dv)};
    }
    for (size_t i = 0; i < results[0].size(); ++i) CHECK(results[0][i] == results[1][i]);
  }
}

TEST_CASE("activations match relu, tanh-gelu, geglu and swiglu formulas", "[kernels][cpu]") {
  auto gelu = [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); };
  auto silu = [](double x) { return x / (1 + std::exp(-x)); };
  for (DType dt : k_float_types) {
    const int64_t rows = 7, width = 19;
    for (ops::Activation act :
         {ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu}) {
      const int64_t in_width = ops::is_gated(act) ? 2 * width : width;
      Tensor x = random_tensor({rows, in_width}, dt, 15, Device::cpu(), -3.0, 3.0);
      Tensor y = poisoned({rows, width}, dt);
      ops::activation_forward(act, x, y);
      auto xv = values_of(x);
      std::vector<double> ref;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < width; ++i) {
          double a = xv[r * in_width + i];
          switch (act) {
            case ops::Activation::relu: ref.push_back(std::max(a, 0.0)); break;
            case ops::Activation::gelu: ref.push_back(gelu(a)); break;
            case ops::Activation::geglu: ref.push_back(gelu(a) * xv[r * in_width + width + i]); break;
            case ops::Activation::swiglu: ref.push_back(silu(a) * xv[r * in_width + width + i]); break;
          }
        }
      }
      check(y, ref, ops::activation_name(act));
    }
  }
}

TEST_CASE("cross-entropy is -log softmax at the target, zero where ignored", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    const int64_t rows = 7, vocab = 19;
    Tensor logits = random_tensor({rows, vocab}, dt, 16, Device::cpu(), -4.0, 4.0);
    std::vector<int32_t> tv = {3, -1, 18, 0, -100, 7, 7};
    Tensor targets = ids_tensor(tv, {rows});
    Tensor loss = poisoned({rows}, dt), lse = poisoned({rows}, dt);
    ops::cross_entropy_forward(logits, targets, loss, lse);
    auto lv = values_of(logits);
    std::vector<double> ref_loss, ref_lse;
    for (int64_t r = 0; r < rows; ++r) {
      double total = 0;
      for (int64_t i = 0; i < vocab; ++i) total += std::exp(lv[r * vocab + i]);
      ref_lse.push_back(std::log(total));
      ref_loss.push_back(tv[r] < 0 ? 0.0 : -std::log(std::exp(lv[r * vocab + tv[r]]) / total));
    }
    check(loss, ref_loss, "cross-entropy loss");
    check(lse, ref_lse, "cross-entropy lse");
    auto got = values_of(loss);
    CHECK(got[1] == 0.0);
    CHECK(got[4] == 0.0);
  }
}

TEST_CASE("elementwise ops, casts and reductions", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    const int64_t rows = 7, cols = 19, n = rows * cols;
    Tensor a = random_tensor({rows, cols}, dt, 17), b = random_tensor({rows, cols}, dt, 18);
    auto av = values_of(a), bv = values_of(b);
    Tensor out = poisoned({rows, cols}, dt);
    ops::add(a, b, out);
    std::vector<double> ref(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ref[i] = av[i] + bv[i];
    check(out, ref, "add");

    ops::accumulate(out, a, 0.75f);
    for (int64_t i = 0; i < n; ++i) ref[i] += 0.75 * av[i];
    check(out, ref, "accumulate");

    ops::scale(out, -1.5f);
    for (int64_t i = 0; i < n; ++i) ref[i] *= -1.5;
    check(out, ref, "scale");

    double s = 0, ss = 0;
    for (double x : av) {
      s += x;
      ss += x * x;
    }
    CHECK(ops::sum(a) == Approx(s).epsilon(1e-6));
    CHECK(ops::sum_squares(a) == Approx(ss).epsilon(1e-6));

    Tensor col = poisoned({cols}, dt);
    ops::column_sum(a, col);
    std::vector<double> ref_col(static_cast<size_t>(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) ref_col[c] += av[r * cols + c];
    }
    check(col, ref_col, "column_sum");

    for (DType to : {DType::f32, DType::f64}) {
      Tensor dst = poisoned({rows, cols}, to);
      ops::cast(a, dst);
      auto dv = values_of(dst);
      for (int64_t i = 0; i < n; ++i) {
        double expected = to == DType::f32 ? static_cast<double>(static_cast<float>(av[i])) : av[i];
        REQUIRE(dv[i] == expected);
      }
    }
    Tensor half = Tensor::empty({rows, cols}, DType::bf16), back = poisoned({rows, cols}, dt);
    ops::cast(a, half);
    ops::cast(half, back);
    auto hv = values_of(half), backv = values_of(back);
    for (int64_t i = 0; i < n; ++i) {
      REQUIRE(std::abs(hv[i] - av[i]) <= std::abs(av[i]) * (1.0 / 256));  // 8 significant bits
      REQUIRE(backv[i] == hv[i]);
    }
  }
}

TEST_CASE("gather_rows and scatter_add_rows follow the index, repeats add up", "[kernels][cpu]") {
  for (DType dt : k_float_types) {
    const int64_t src_rows = 7, cols = 5;
    std::vector<int32_t> iv = {6, 0, 3, 3, 1, 6, 6, 2, 0, 5, 4, 3, 3, 0, 1, 2, 6, 5, 4};  // 19 rows
    const int64_t n = static_cast<int64_t>(iv.size());
    Tensor index = ids_tensor(iv, {n});
    Tensor src = random_tensor({src_rows, cols}, dt, 19);
    Tensor dst = poisoned({n, cols}, dt);
    ops::gather_rows(src, index, dst);
    auto sv = values_of(src);
    std::vector<double> ref;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < cols; ++c) ref.push_back(sv[iv[i] * cols + c]);
    }
    check(dst, ref, "gather_rows");

    Tensor rows_in = random_tensor({n, cols}, dt, 20);
    Tensor acc = random_tensor({src_rows, cols}, dt, 21);
    auto rv = values_of(rows_in), accv = values_of(acc);
    ops::scatter_add_rows(rows_in, index, acc);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < cols; ++c) accv[iv[i] * cols + c] += rv[i * cols + c];
    }
    check(acc, accv, "scatter_add_rows");
  }
  // Index tensors move with the same kernels (i32 rows).
  Tensor src = ids_tensor({10, 11, 12, 13}, {4});
  Tensor dst = Tensor::zeros({3}, DType::i32);
  ops::gather_rows(src, ids_tensor({3, 3, 0}, {3}), dst);
  CHECK(dst.to_vector<int32_t>() == std::vector<int32_t>{13, 13, 10});
  // A gather does not work in place: rows of the source overwritten before they are read.
  Tensor rows = ids_tensor({1, 2, 3, 4, 5, 6}, {3, 2});
  Tensor tail = rows.rows(1, 3);
  REQUIRE_THROWS_WITH(ops::gather_rows(rows, ids_tensor({2, 0}, {2}), tail), Catch::Contains("dst overlaps src"));
}

namespace {

// Columns [begin, end) of a row-major [rows, cols] value list, as a [rows, end - begin] tensor.
Tensor column_block(const std::vector<double>& v, int64_t rows, int64_t cols, int64_t begin, int64_t end, DType dt) {
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r) out.insert(out.end(), v.begin() + r * cols + begin, v.begin() + r * cols + end);
  return values_tensor(out, {rows, end - begin}, dt);
}

}  // namespace

// A [7, 19] problem split over three uneven vocabulary shards: the shards' embedding rows add
// up to the full lookup, the shard lse's combine into the full lse, and the sharded losses and
// gradients (given the full lse) are the full ones.
TEST_CASE("vocabulary-sharded embedding and cross-entropy recombine into the unsharded ops", "[kernels][cpu]") {
  const int64_t rows = 7, vocab = 19, dim = 5;
  const std::vector<int64_t> bounds = {0, 6, 13, 19};
  const std::vector<int32_t> ids = {0, 18, 6, 12, 13, 5, 6};     // every shard, both edges
  const std::vector<int32_t> tv = {3, -1, 18, 13, 6, 12, -100};  // every shard, ignored rows
  for (DType dt : k_float_types) {
    INFO("dtype " << dtype_name(dt));
    const Tolerance tol = tolerance_for(dt);
    Tensor table = random_tensor({vocab, dim}, dt, 60);
    Tensor id_tensor = ids_tensor(ids, {rows});
    Tensor full_emb = poisoned({rows, dim}, dt);
    ops::embedding_forward(id_tensor, table, full_emb);
    Tensor dout = random_tensor({rows, dim}, dt, 61);
    Tensor full_dtable = random_tensor({vocab, dim}, dt, 62);
    Tensor shard_dtable = full_dtable.clone();
    ops::embedding_backward(id_tensor, dout, full_dtable);

    Tensor logits = random_tensor({rows, vocab}, dt, 63, Device::cpu(), -4.0, 4.0);
    Tensor targets = ids_tensor(tv, {rows});
    Tensor loss = poisoned({rows}, dt), lse = poisoned({rows}, dt);
    ops::cross_entropy_forward(logits, targets, loss, lse);
    const float scale = 0.625f;
    Tensor full_dlogits = poisoned({rows, vocab}, dt);
    ops::cross_entropy_backward(logits, targets, lse, scale, full_dlogits);
    const auto lv = values_of(logits), lse_ref = values_of(lse), loss_ref = values_of(loss);
    const auto dl_ref = values_of(full_dlogits);
    Tensor in_place = logits.clone();  // the gradient written over the logits: the same values
    ops::cross_entropy_backward(in_place, targets, lse, scale, in_place);
    REQUIRE(values_of(in_place) == dl_ref);

    std::vector<double> emb_sum(static_cast<size_t>(rows * dim), 0.0), exp_sum(static_cast<size_t>(rows), 0.0);
    std::vector<std::vector<double>> shard_lse, shard_loss;
    for (size_t s = 0; s + 1 < bounds.size(); ++s) {
      const int64_t b = bounds[s], e = bounds[s + 1];
      const ops::VocabShard shard{b, vocab};
      INFO("shard [" << b << "," << e << ")");
      Tensor out = poisoned({rows, dim}, dt);
      ops::embedding_forward(id_tensor, table.rows(b, e), out, shard);
      const auto ov = values_of(out);
      for (int64_t t = 0; t < rows; ++t) {
        for (int64_t i = 0; i < dim; ++i) {
          const bool local = ids[t] >= b && ids[t] < e;
          if (!local) REQUIRE(ov[t * dim + i] == 0.0);  // other shards give exact zeros
          emb_sum[t * dim + i] += ov[t * dim + i];
        }
      }
      Tensor dtable_local = shard_dtable.rows(b, e);
      ops::embedding_backward(id_tensor, dout, dtable_local, shard);

      Tensor local_logits = column_block(lv, rows, vocab, b, e, dt);
      Tensor sl = poisoned({rows}, dt), se = poisoned({rows}, dt);
      ops::cross_entropy_forward(local_logits, targets, sl, se, shard);
      shard_loss.push_back(values_of(sl));
      shard_lse.push_back(values_of(se));
      for (int64_t t = 0; t < rows; ++t) exp_sum[t] += std::exp(shard_lse.back()[t]);
      Tensor dl = poisoned({rows, e - b}, dt);
      ops::cross_entropy_backward(local_logits, targets, lse, scale, dl, shard);
      check(dl, values_of(column_block(dl_ref, rows, vocab, b, e, dt)), "sharded dlogits");
    }
    check(full_emb, emb_sum, "embedding summed over shards");
    require_close(values_of(shard_dtable), values_of(full_dtable), tol.atol, tol.rtol, "sharded dtable");

    std::vector<double> lse_combined, loss_combined;
    for (int64_t t = 0; t < rows; ++t) {
      lse_combined.push_back(std::log(exp_sum[t]));
      double row_loss = 0;
      for (size_t s = 0; s + 1 < bounds.size(); ++s) {
        const double sl = shard_loss[s][t], se = shard_lse[s][t];
        const bool local = tv[t] >= bounds[s] && tv[t] < bounds[s + 1];
        if (tv[t] < 0) REQUIRE(sl == 0.0);
        if (tv[t] >= 0 && !local) REQUIRE(sl == se);  // loss = lse where another shard holds the target
        if (local) {
          require_close({se - sl}, {lv[t * vocab + tv[t]]}, tol.atol, tol.rtol, "local target logit");
          row_loss = lse_combined.back() - (se - sl);
        }
      }
      loss_combined.push_back(row_loss);
    }
    require_close(lse_combined, lse_ref, tol.atol, tol.rtol, "lse combined over shards");
    require_close(loss_combined, loss_ref, tol.atol, tol.rtol, "loss from the combined lse");
  }
}

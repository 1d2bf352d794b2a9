// Every CPU backward in f64 against central finite differences of a random linear functional
// of the forward outputs; accumulating gradients are checked as the amount they add.
#include <algorithm>

#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr DType k_f64 = DType::f64;

}  // namespace

TEST_CASE("embedding backward adds the gradient of the lookup", "[kernels][cpu][grad]") {
  const int64_t vocab = 7, dim = 5, tokens = 19;
  Tensor table = random_tensor({vocab, dim}, k_f64, 1);
  Tensor ids = random_ids(tokens, vocab, 2);  // 19 draws from 7 ids: repeats
  auto r = random_values(tokens * dim, 3);
  Tensor out = Tensor::empty({tokens, dim}, k_f64);
  auto f = [&] {
    ops::embedding_forward(ids, table, out);
    return functional(out, r);
  };
  Tensor dout = values_tensor(r, {tokens, dim}, k_f64);
  Tensor dtable = random_tensor({vocab, dim}, k_f64, 4);
  auto before = values_of(dtable);
  ops::embedding_backward(ids, dout, dtable);
  check_gradient(table, f, minus(values_of(dtable), before), "embedding dtable");
}

TEST_CASE("position backward sums the gradient of every sequence", "[kernels][cpu][grad]") {
  const int64_t seq_len = 7, max_len = 9, dim = 3, rows = 3 * seq_len;
  Tensor x = random_tensor({rows, dim}, k_f64, 5);
  Tensor pos = random_tensor({max_len, dim}, k_f64, 6);
  auto r = random_values(rows * dim, 7);
  auto f = [&] {
    Tensor y = x.clone();
    ops::position_add_forward(y, pos, seq_len);
    return functional(y, r);
  };
  Tensor dpos = random_tensor({max_len, dim}, k_f64, 8);
  auto before = values_of(dpos);
  ops::position_add_backward(values_tensor(r, {rows, dim}, k_f64), dpos, seq_len);
  check_gradient(pos, f, minus(values_of(dpos), before), "positions dpos");
}

TEST_CASE("rmsnorm backward", "[kernels][cpu][grad]") {
  for (int64_t rows : {1, 7, 19}) {
    const int64_t dim = 7;
    Tensor x = random_tensor({rows, dim}, k_f64, 9, Device::cpu(), -2.0, 2.0);
    Tensor w = random_tensor({dim}, k_f64, 10);
    auto r = random_values(rows * dim, 11);
    Tensor y = Tensor::empty({rows, dim}, k_f64), rstd = Tensor::empty({rows}, k_f64);
    auto f = [&] {
      ops::rmsnorm_forward(x, w, y, rstd, 1e-5f);
      return functional(y, r);
    };
    f();
    Tensor dx = poisoned({rows, dim}, k_f64), dw = random_tensor({dim}, k_f64, 12);
    auto dw_before = values_of(dw);
    ops::rmsnorm_backward(x, w, rstd, values_tensor(r, {rows, dim}, k_f64), dx, dw);
    check_gradient(x, f, values_of(dx), "rmsnorm dx rows=" + std::to_string(rows));
    check_gradient(w, f, minus(values_of(dw), dw_before), "rmsnorm dw rows=" + std::to_string(rows));
  }
}

TEST_CASE("layernorm backward", "[kernels][cpu][grad]") {
  for (int64_t rows : {1, 7, 19}) {
    const int64_t dim = 7;
    Tensor x = random_tensor({rows, dim}, k_f64, 13, Device::cpu(), -1.0, 3.0);
    Tensor w = random_tensor({dim}, k_f64, 14), b = random_tensor({dim}, k_f64, 15);
    auto r = random_values(rows * dim, 16);
    Tensor y = Tensor::empty({rows, dim}, k_f64), mean = Tensor::empty({rows}, k_f64);
    Tensor rstd = Tensor::empty({rows}, k_f64);
    auto f = [&] {
      ops::layernorm_forward(x, w, b, y, mean, rstd, 1e-5f);
      return functional(y, r);
    };
    f();
    Tensor dx = poisoned({rows, dim}, k_f64);
    Tensor dw = random_tensor({dim}, k_f64, 17), db = random_tensor({dim}, k_f64, 18);
    auto dw_before = values_of(dw), db_before = values_of(db);
    ops::layernorm_backward(x, w, mean, rstd, values_tensor(r, {rows, dim}, k_f64), dx, dw, db);
    std::string what = " rows=" + std::to_string(rows);
    check_gradient(x, f, values_of(dx), "layernorm dx" + what);
    check_gradient(w, f, minus(values_of(dw), dw_before), "layernorm dw" + what);
    check_gradient(b, f, minus(values_of(db), db_before), "layernorm db" + what);
  }
}

TEST_CASE("rope backward is the inverse rotation", "[kernels][cpu][grad]") {
  const int64_t heads = 2, hd = 6, seq_len = 7, rows = 2 * seq_len;
  Tensor x = random_tensor({rows, heads * hd}, k_f64, 19);
  auto r = random_values(rows * heads * hd, 20);
  auto f = [&] {
    Tensor y = x.clone();
    ops::rope(y, heads, seq_len, 500.0f, false);
    return functional(y, r);
  };
  Tensor dx = values_tensor(r, {rows, heads * hd}, k_f64);
  ops::rope(dx, heads, seq_len, 500.0f, true);
  check_gradient(x, f, values_of(dx), "rope dx");
}

TEST_CASE("attention backward, with grouped-query heads, causal and not, within documents, and cross",
          "[kernels][cpu][grad]") {
  struct Case {
    ops::AttentionShape s;
    std::vector<std::vector<int>> docs = {};  // document lengths per sequence (doc_starts), or none
  };
  for (const Case& c : {Case{{2, 7, 4, 2, 4}}, Case{{1, 19, 2, 1, 3}}, Case{{1, 1, 2, 2, 2}}, Case{{1, 70, 2, 1, 2}},
                        Case{{2, 7, 4, 2, 4, false}}, Case{{1, 19, 2, 1, 3, false}}, Case{{1, 1, 2, 2, 2, false}},
                        Case{{1, 70, 2, 1, 2, false}}, Case{{2, 7, 4, 2, 4}, {{3, 1, 3}, {1, 6}}},
                        Case{{1, 19, 2, 1, 3}, {{5, 1, 9, 4}}}, Case{{1, 70, 2, 1, 2}, {{30, 25, 15}}},
                        Case{{1, 1, 2, 2, 2}, {{1}}},
                        // cross-attention (kv_seq_len != seq_len): fewer, more, and several row blocks
                        Case{{1, 7, 4, 2, 3, false, 19}}, Case{{2, 19, 4, 2, 3, false, 7}},
                        Case{{1, 70, 2, 1, 2, false, 5}}, Case{{2, 1, 2, 1, 2, false, 3}}}) {
    const ops::AttentionShape& s = c.s;
    const int64_t tokens = s.batch * s.seq_len, kv_rows = s.batch * s.kv_len();
    Tensor starts;
    if (!c.docs.empty()) starts = Tensor::from_vector(document_starts_of(c.docs, s.seq_len), {tokens}, DType::i32);
    Tensor q = random_tensor({tokens, s.num_heads * s.head_dim}, k_f64, 21, Device::cpu(), -1.5, 1.5);
    Tensor k = random_tensor({kv_rows, s.num_kv_heads * s.head_dim}, k_f64, 22, Device::cpu(), -1.5, 1.5);
    Tensor v = random_tensor({kv_rows, s.num_kv_heads * s.head_dim}, k_f64, 23);
    auto r = random_values(q.numel(), 24);
    Tensor out = Tensor::empty(q.shape(), k_f64), lse = Tensor::empty({s.batch, s.num_heads, s.seq_len}, k_f64);
    auto f = [&] {
      ops::attention_forward(q, k, v, out, lse, s, starts);
      return functional(out, r);
    };
    f();
    Tensor dq = poisoned(q.shape(), k_f64), dk = poisoned(k.shape(), k_f64), dv = poisoned(v.shape(), k_f64);
    ops::attention_backward(q, k, v, out, lse, values_tensor(r, q.shape(), k_f64), dq, dk, dv, s, Tensor(), starts);
    std::string what = " S=" + std::to_string(s.seq_len) + " Hq=" + std::to_string(s.num_heads) +
                       " Hkv=" + std::to_string(s.num_kv_heads) + (s.causal ? " causal" : " non-causal") +
                       (c.docs.empty() ? "" : " documents") + " Skv=" + std::to_string(s.kv_len());
    check_gradient(q, f, values_of(dq), "attention dq" + what);
    check_gradient(k, f, values_of(dk), "attention dk" + what);
    check_gradient(v, f, values_of(dv), "attention dv" + what);
  }
}

TEST_CASE("attention backward names a bad workspace", "[kernels][cpu]") {
  const ops::AttentionShape s{1, 3, 2, 1, 4};
  Tensor q = random_tensor({3, 8}, k_f64, 31), k = random_tensor({3, 4}, k_f64, 32), v = random_tensor({3, 4}, k_f64, 33);
  Tensor out = Tensor::empty(q.shape(), k_f64), lse = Tensor::empty({1, 2, 3}, k_f64);
  ops::attention_forward(q, k, v, out, lse, s);
  Tensor dq = Tensor::empty(q.shape(), k_f64), dk = Tensor::empty(k.shape(), k_f64), dv = Tensor::empty(v.shape(), k_f64);
  CHECK(ops::attention_workspace_numel(s, Device::cpu()) == 0);
  Tensor wrong = Tensor::empty({16}, k_f64);
  REQUIRE_THROWS_WITH(ops::attention_backward(q, k, v, out, lse, out, dq, dk, dv, s, wrong),
                      Catch::Contains("attention workspace has dtype f64, expected f32"));
}

TEST_CASE("activation backward for relu, gelu, geglu and swiglu", "[kernels][cpu][grad]") {
  const int64_t rows = 7, width = 5;
  for (ops::Activation act :
       {ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu}) {
    const int64_t in_width = ops::is_gated(act) ? 2 * width : width;
    // Keep relu inputs away from the kink at 0, where finite differences are meaningless.
    auto xv = random_values(rows * in_width, 25, -3.0, 3.0);
    for (double& a : xv) {
      if (std::abs(a) < 0.01) a = 0.5;
    }
    Tensor x = values_tensor(xv, {rows, in_width}, k_f64);
    auto r = random_values(rows * width, 26);
    Tensor y = Tensor::empty({rows, width}, k_f64);
    auto f = [&] {
      ops::activation_forward(act, x, y);
      return functional(y, r);
    };
    Tensor dx = poisoned(x.shape(), k_f64);
    ops::activation_backward(act, x, values_tensor(r, {rows, width}, k_f64), dx);
    check_gradient(x, f, values_of(dx), std::string("activation dx ") + ops::activation_name(act));
  }
}

TEST_CASE("cross-entropy backward, ignored targets get zero rows", "[kernels][cpu][grad]") {
  const int64_t rows = 7, vocab = 11;
  const float scale = 0.375f;
  Tensor logits = random_tensor({rows, vocab}, k_f64, 27, Device::cpu(), -3.0, 3.0);
  std::vector<int32_t> tv = {4, -1, 10, 0, -1, 4, 2};
  Tensor targets = ids_tensor(tv, {rows});
  Tensor loss = Tensor::empty({rows}, k_f64), lse = Tensor::empty({rows}, k_f64);
  auto f = [&] {
    ops::cross_entropy_forward(logits, targets, loss, lse);
    return scale * ops::sum(loss);
  };
  f();
  Tensor dlogits = poisoned({rows, vocab}, k_f64);
  ops::cross_entropy_backward(logits, targets, lse, scale, dlogits);
  auto dv = values_of(dlogits);
  check_gradient(logits, f, dv, "cross-entropy dlogits");
  for (int64_t i = 0; i < vocab; ++i) {
    REQUIRE(dv[1 * vocab + i] == 0.0);
    REQUIRE(dv[4 * vocab + i] == 0.0);
  }
}

TEST_CASE("cross-entropy with its gradient at once: loss, lse and dlogits of the two ops, in place too",
          "[kernels][cpu][grad]") {
  const int64_t rows = 7, vocab = 11;
  const float scale = 0.375f;
  Tensor logits = random_tensor({rows, vocab}, k_f64, 31, Device::cpu(), -3.0, 3.0);
  Tensor targets = ids_tensor({4, -1, 10, 0, -1, 4, 2}, {rows});
  Tensor loss = Tensor::empty({rows}, k_f64), lse = Tensor::empty({rows}, k_f64);
  ops::cross_entropy_forward(logits, targets, loss, lse);
  Tensor dlogits = poisoned({rows, vocab}, k_f64);
  ops::cross_entropy_backward(logits, targets, lse, scale, dlogits);
  Tensor both_loss = poisoned({rows}, k_f64), both_lse = poisoned({rows}, k_f64), in_place = logits.clone();
  ops::cross_entropy_with_grad(in_place, targets, both_loss, both_lse, scale, in_place);
  REQUIRE(values_of(both_loss) == values_of(loss));
  REQUIRE(values_of(both_lse) == values_of(lse));
  REQUIRE(values_of(in_place) == values_of(dlogits));
  Tensor short_loss = Tensor::empty({rows - 1}, k_f64);
  REQUIRE_THROWS_WITH(ops::cross_entropy_with_grad(logits, targets, short_loss, lse, scale, dlogits),
                      Catch::Contains("cross-entropy loss"));
}

TEST_CASE("scatter_add_rows is the adjoint of gather_rows", "[kernels][cpu][grad]") {
  const int64_t src_rows = 7, cols = 3, n = 19;
  Tensor src = random_tensor({src_rows, cols}, k_f64, 28);
  Tensor index = random_ids(n, src_rows, 29);
  auto r = random_values(n * cols, 30);
  Tensor dst = Tensor::empty({n, cols}, k_f64);
  auto f = [&] {
    ops::gather_rows(src, index, dst);
    return functional(dst, r);
  };
  Tensor dsrc = Tensor::zeros({src_rows, cols}, k_f64);
  ops::scatter_add_rows(values_tensor(r, {n, cols}, k_f64), index, dsrc);
  check_gradient(src, f, values_of(dsrc), "gather_rows dsrc");
}

TEST_CASE("moe_combine backward to expert outputs and gate weights", "[kernels][cpu][grad]") {
  const int64_t tokens = 7, k = 2, experts = 3, dim = 5;
  Tensor ids = random_ids(tokens * k, experts, 34).view({tokens, k});
  Tensor sorted_tokens = Tensor::empty({tokens * k}, DType::i32), slot_pos = Tensor::empty({tokens * k}, DType::i32);
  ops::moe_sort_by_expert(ids, experts, sorted_tokens, slot_pos);
  Tensor y_sorted = random_tensor({tokens * k, dim}, k_f64, 35);
  Tensor weights = random_tensor({tokens, k}, k_f64, 36, Device::cpu(), 0.0, 1.0);
  auto r = random_values(tokens * dim, 37);
  Tensor out = Tensor::empty({tokens, dim}, k_f64);
  auto f = [&] {
    ops::moe_combine_forward(y_sorted, slot_pos, weights, out);
    return functional(out, r);
  };
  Tensor dy_sorted = poisoned(y_sorted.shape(), k_f64), dweights = poisoned(weights.shape(), k_f64);
  ops::moe_combine_backward(y_sorted, slot_pos, weights, values_tensor(r, {tokens, dim}, k_f64), dy_sorted, dweights);
  check_gradient(y_sorted, f, values_of(dy_sorted), "combine dy_sorted");
  check_gradient(weights, f, values_of(dweights), "combine dweights");
}

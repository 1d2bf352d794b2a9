// Document masking and positions on the CPU (ops doc_starts): a packed document computes what it
// computes alone, position gradients, bad starts (masked attention gradients: test_cpu_gradients.cpp).
#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr DType k_f64 = DType::f64;
const DType k_float_types[] = {DType::f32, DType::f64};

void check(const std::vector<double>& got, const std::vector<double>& ref, DType dt, const std::string& what) {
  Tolerance tol = tolerance_for(dt);
  require_close(got, ref, tol.atol, tol.rtol, what + " " + dtype_name(dt));
}

Tensor starts_tensor(const std::vector<std::vector<int>>& docs, int64_t seq_len) {
  std::vector<int32_t> starts = document_starts_of(docs, seq_len);
  return Tensor::from_vector(starts, {static_cast<int64_t>(starts.size())}, DType::i32);
}

// Rows [first, first + count) of a [T, w] tensor, as values.
std::vector<double> row_values(const Tensor& t, int64_t first, int64_t count) {
  return values_of(t.rows(first, first + count));
}

// Documents chosen to hit the blocking: one-token documents, a document crossing the CPU's
// 64-row blocks, a whole-sequence document, and different cuts in the two sequences.
const std::vector<std::vector<int>> k_docs = {{1, 33, 5, 1, 30}, {70}};
constexpr int64_t k_seq = 70;

}  // namespace

TEST_CASE("document-masked attention equals each document attended on its own", "[kernels][cpu][documents]") {
  for (DType dt : k_float_types) {
    const ops::AttentionShape s{2, k_seq, 4, 2, 6};
    const int64_t tokens = s.batch * s.seq_len, qw = s.num_heads * s.head_dim, kw = s.num_kv_heads * s.head_dim;
    Tensor q = random_tensor({tokens, qw}, dt, 41, Device::cpu(), -2.0, 2.0);
    Tensor k = random_tensor({tokens, kw}, dt, 42, Device::cpu(), -2.0, 2.0);
    Tensor v = random_tensor({tokens, kw}, dt, 43);
    Tensor out = poisoned(q.shape(), dt), lse = poisoned({s.batch, s.num_heads, s.seq_len}, dt);
    ops::attention_forward(q, k, v, out, lse, s, starts_tensor(k_docs, k_seq));
    const std::vector<double> lse_all = values_of(lse);
    for (int64_t b = 0; b < s.batch; ++b) {
      int64_t begin = 0;
      for (int length : k_docs[static_cast<size_t>(b)]) {
        const int64_t first = b * k_seq + begin;
        const ops::AttentionShape one{1, length, s.num_heads, s.num_kv_heads, s.head_dim};
        Tensor doc_out = poisoned({length, qw}, dt), doc_lse = poisoned({1, s.num_heads, length}, dt);
        ops::attention_forward(q.rows(first, first + length).clone(), k.rows(first, first + length).clone(),
                               v.rows(first, first + length).clone(), doc_out, doc_lse, one);
        const std::string what = "sequence " + std::to_string(b) + " document at " + std::to_string(begin);
        check(row_values(out, first, length), values_of(doc_out), dt, what + " out");
        std::vector<double> lse_part;
        for (int64_t h = 0; h < s.num_heads; ++h) {
          for (int64_t i = 0; i < length; ++i) {
            lse_part.push_back(lse_all[static_cast<size_t>((b * s.num_heads + h) * k_seq + begin + i)]);
          }
        }
        check(lse_part, values_of(doc_lse), dt, what + " lse");
        begin += length;
      }
    }
  }
}

TEST_CASE("document positions restart rope and learned positions at each document", "[kernels][cpu][documents]") {
  for (DType dt : k_float_types) {
    const int64_t heads = 2, hd = 8, dim = heads * hd, tokens = 2 * k_seq;
    Tensor starts = starts_tensor(k_docs, k_seq);
    Tensor x = random_tensor({tokens, dim}, dt, 44);
    Tensor pos = random_tensor({k_seq, dim}, dt, 45);
    Tensor rotated = x.clone(), added = x.clone();
    ops::rope(rotated, heads, k_seq, 500.0f, false, starts);
    ops::position_add_forward(added, pos, k_seq, starts);
    for (int64_t b = 0; b < 2; ++b) {
      int64_t begin = 0;
      for (int length : k_docs[static_cast<size_t>(b)]) {
        const int64_t first = b * k_seq + begin;
        Tensor doc_rotated = x.rows(first, first + length).clone();
        ops::rope(doc_rotated, heads, length, 500.0f, false);  // positions 0 .. length - 1
        Tensor doc_added = x.rows(first, first + length).clone();
        ops::position_add_forward(doc_added, pos, length);
        const std::string what = "sequence " + std::to_string(b) + " document at " + std::to_string(begin);
        check(row_values(rotated, first, length), values_of(doc_rotated), dt, what + " rope");
        check(row_values(added, first, length), values_of(doc_added), dt, what + " positions");
        begin += length;
      }
    }
    ops::rope(rotated, heads, k_seq, 500.0f, true, starts);
    check(values_of(rotated), values_of(x), dt, "rope inverse with document positions");
  }
}

TEST_CASE("document positions backward, f64 finite differences", "[kernels][cpu][grad][documents]") {
  const int64_t heads = 2, hd = 6, dim = heads * hd, seq_len = 7, max_len = 9, rows = 2 * seq_len;
  Tensor starts = starts_tensor({{3, 1, 3}, {1, 6}}, seq_len);
  auto r = random_values(rows * dim, 55);
  Tensor x = random_tensor({rows, dim}, k_f64, 56);
  auto rope_f = [&] {
    Tensor y = x.clone();
    ops::rope(y, heads, seq_len, 500.0f, false, starts);
    return functional(y, r);
  };
  Tensor dx = values_tensor(r, {rows, dim}, k_f64);
  ops::rope(dx, heads, seq_len, 500.0f, true, starts);
  check_gradient(x, rope_f, values_of(dx), "rope dx with document positions");

  Tensor pos = random_tensor({max_len, dim}, k_f64, 57);
  auto pos_f = [&] {
    Tensor y = x.clone();
    ops::position_add_forward(y, pos, seq_len, starts);
    return functional(y, r);
  };
  Tensor dpos = random_tensor({max_len, dim}, k_f64, 58);
  auto before = values_of(dpos);
  ops::position_add_backward(values_tensor(r, {rows, dim}, k_f64), dpos, seq_len, starts);
  check_gradient(pos, pos_f, minus(values_of(dpos), before), "positions dpos with document positions");
}

TEST_CASE("document starts that are not documents are refused, naming the token", "[kernels][cpu][documents]") {
  const ops::AttentionShape s{1, 4, 1, 1, 2};
  Tensor q = random_tensor({4, 2}, k_f64, 61), k = random_tensor({4, 2}, k_f64, 62);
  Tensor v = random_tensor({4, 2}, k_f64, 63);
  Tensor out = Tensor::empty(q.shape(), k_f64), lse = Tensor::empty({1, 1, 4}, k_f64);
  auto starts = [](std::vector<int32_t> v) { return Tensor::from_vector(v, {4}, DType::i32); };
  REQUIRE_THROWS_WITH(ops::attention_forward(q, k, v, out, lse, s, starts({0, 0, 1, 1})),
                      Catch::StartsWith("attention doc_starts[2] = 1 at position 2 of its sequence: expected the "
                                        "previous token's start or 2"));
  REQUIRE_THROWS_WITH(ops::rope(q, 1, 2, 500.0f, false, starts({0, 1, 1, 0})),
                      Catch::StartsWith("rope doc_starts[2] = 1 at position 0 of its sequence: expected 0"));
  REQUIRE_THROWS_WITH(ops::position_add_forward(q, k, 4, starts({0, 0, 2, 5})),
                      Catch::StartsWith("positions doc_starts[3] = 5 at position 3 of its sequence: expected the "
                                        "previous token's start or 3"));
  REQUIRE_THROWS_WITH(ops::attention_forward(q, k, v, out, lse, ops::AttentionShape{1, 4, 1, 1, 2, false},
                                             starts({0, 0, 0, 0})),
                      Catch::StartsWith("attention: document masking (doc_starts) needs the causal mask"));
  REQUIRE_THROWS_WITH(ops::attention_forward(q, k, v, out, lse, s, Tensor::from_vector(std::vector<int32_t>{0, 0}, {2},
                                                                                        DType::i32)),
                      Catch::Contains("attention doc_starts"));
  // A valid structure is accepted: a new document may start at any position.
  ops::attention_forward(q, k, v, out, lse, s, starts({0, 1, 1, 3}));
}

TEST_CASE("cross-attention (kv_seq_len != seq_len) refuses the causal mask and document masking",
          "[kernels][cpu][documents]") {
  Tensor q = random_tensor({4, 2}, k_f64, 64), k = random_tensor({6, 2}, k_f64, 65);
  Tensor v = random_tensor({6, 2}, k_f64, 66);
  Tensor out = Tensor::empty(q.shape(), k_f64), lse = Tensor::empty({1, 1, 4}, k_f64);
  const ops::AttentionShape causal{1, 4, 1, 1, 2, true, 6}, cross{1, 4, 1, 1, 2, false, 6};
  const std::string needs_noncausal = "attention: kv_seq_len 6 != seq_len 4 (cross-attention) needs causal = false";
  REQUIRE_THROWS_WITH(ops::attention_forward(q, k, v, out, lse, causal), Catch::StartsWith(needs_noncausal));
  Tensor starts = Tensor::from_vector(std::vector<int32_t>{0, 0, 0, 0}, {4}, DType::i32);
  REQUIRE_THROWS_WITH(ops::attention_forward(q, k, v, out, lse, cross, starts),
                      Catch::StartsWith("attention: kv_seq_len 6 != seq_len 4 (cross-attention) cannot take document "
                                        "masking (doc_starts)"));
  Tensor dq = Tensor::empty(q.shape(), k_f64), dk = Tensor::empty(k.shape(), k_f64);
  Tensor dv = Tensor::empty(v.shape(), k_f64);
  REQUIRE_THROWS_WITH(ops::attention_backward(q, k, v, out, lse, out, dq, dk, dv, causal),
                      Catch::StartsWith(needs_noncausal));
  // k with the query count of rows instead of kv_seq_len: named.
  REQUIRE_THROWS_WITH(ops::attention_forward(q, q, q, out, lse, cross), Catch::StartsWith("attention k"));
  ops::attention_forward(q, k, v, out, lse, cross);  // the valid call runs
}

// CPU routing and permutation ops on hand-made and random examples (exact ids, orders and
// counts), the combine forward, an AdamW step computed by hand, and the messages of bad input.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>

#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;
using Catch::Contains;

namespace {

const DType k_float_types[] = {DType::f32, DType::f64};

void check(const Tensor& got, const std::vector<double>& ref, const std::string& what) {
  Tolerance tol = tolerance_for(got.dtype());
  require_close(values_of(got), ref, tol.atol, tol.rtol, what + " " + dtype_name(got.dtype()));
}

std::vector<double> softmax_rows(const std::vector<double>& logits, int64_t rows, int64_t cols) {
  std::vector<double> out(logits.size());
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (int64_t c = 0; c < cols; ++c) total += std::exp(logits[r * cols + c]);
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = std::exp(logits[r * cols + c]) / total;
  }
  return out;
}

struct RouterOut {
  Tensor probs, ids, weights;
};

// The plain softmax top-k router (no bias, no groups).
RouterOut route(const Tensor& logits, int64_t k, bool renormalize) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  RouterOut out{poisoned({tokens, experts}, logits.dtype()), Tensor::empty({tokens, k}, DType::i32),
                poisoned({tokens, k}, logits.dtype())};
  ops::TopKOptions options;
  options.k = k;
  options.renormalize = renormalize;
  ops::router_topk_forward(logits, Tensor(), options, out.probs, out.ids, out.weights);
  return out;
}

}  // namespace

TEST_CASE("router top-k ids on a hand-made example with ties", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    std::vector<double> lv = {1.0,  3.0, 3.0,  0.5,  // tie for first: lower index first
                              2.0,  0.0, 2.0,  5.0,  // tie for second place: expert 0 beats 2
                              0.0,  0.0, 0.0,  0.0,  // all equal: 0, 1
                              -1.0, 4.0, -1.0, 4.0};
    Tensor logits = values_tensor(lv, {4, 4}, dt);
    RouterOut out = route(logits, 2, false);
    CHECK(out.ids.to_vector<int32_t>() == std::vector<int32_t>{1, 2, 3, 0, 0, 1, 1, 3});
    auto p = softmax_rows(lv, 4, 4);
    check(out.weights, {p[1], p[2], p[7], p[4], p[8], p[9], p[13], p[15]}, "router weights");
    check(out.probs, p, "router probs");

    RouterOut renorm = route(logits, 2, true);
    CHECK(renorm.ids.to_vector<int32_t>() == out.ids.to_vector<int32_t>());
    check(renorm.weights, {0.5, 0.5, p[7] / (p[7] + p[4]), p[4] / (p[7] + p[4]), 0.5, 0.5, 0.5, 0.5},
          "router renormalized weights");

    RouterOut three = route(logits, 3, false);
    CHECK(three.ids.to_vector<int32_t>() == std::vector<int32_t>{1, 2, 0, 3, 0, 2, 0, 1, 2, 1, 3, 0});
  }
}

TEST_CASE("router forward on random logits matches softmax and a stable sort", "[kernels][cpu][routing]") {
  const int64_t tokens = 19, experts = 8;
  for (DType dt : k_float_types) {
    for (int64_t k : {1, 3, 8}) {
      for (bool renormalize : {false, true}) {
        Tensor logits = random_tensor({tokens, experts}, dt, 40, Device::cpu(), -3.0, 3.0);
        RouterOut out = route(logits, k, renormalize);
        auto p = softmax_rows(values_of(logits), tokens, experts);
        std::vector<int32_t> ref_ids;
        std::vector<double> ref_w;
        for (int64_t t = 0; t < tokens; ++t) {
          std::vector<int32_t> order(experts);
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(),
                           [&](int32_t a, int32_t b) { return p[t * experts + a] > p[t * experts + b]; });
          double selected = 0;
          for (int64_t s = 0; s < k; ++s) selected += p[t * experts + order[s]];
          for (int64_t s = 0; s < k; ++s) {
            ref_ids.push_back(order[s]);
            ref_w.push_back(p[t * experts + order[s]] / (renormalize ? selected : 1.0));
          }
        }
        CHECK(out.ids.to_vector<int32_t>() == ref_ids);
        check(out.probs, p, "router probs");
        check(out.weights, ref_w, "router weights k=" + std::to_string(k));
      }
    }
  }
}

TEST_CASE("moe_sort_by_expert on a hand-made example", "[kernels][cpu][routing]") {
  // tokens: t0 -> {2, 0}, t1 -> {0, 2}, t2 -> {1, 1}, t3 -> {0, 1}; expert 3 gets nothing.
  Tensor ids = ids_tensor({2, 0, 0, 2, 1, 1, 0, 1}, {4, 2});
  Tensor sorted_tokens = Tensor::empty({8}, DType::i32), slot_pos = Tensor::empty({8}, DType::i32);
  auto counts = ops::moe_sort_by_expert(ids, 4, sorted_tokens, slot_pos);
  CHECK(counts == std::vector<int64_t>{3, 3, 2, 0});
  // expert 0: (t0,s1) (t1,s0) (t3,s0); expert 1: (t2,s0) (t2,s1) (t3,s1); expert 2: (t0,s0) (t1,s1)
  CHECK(sorted_tokens.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 3, 2, 2, 3, 0, 1});
  CHECK(slot_pos.to_vector<int32_t>() == std::vector<int32_t>{6, 0, 1, 7, 3, 4, 2, 5});
}

TEST_CASE("moe_sort_by_expert matches a lexicographic sort of (expert, token, slot)", "[kernels][cpu][routing]") {
  const int64_t tokens = 19, k = 3, experts = 5;
  Tensor ids = random_ids(tokens * k, experts, 41).view({tokens, k});
  Tensor sorted_tokens = Tensor::empty({tokens * k}, DType::i32);
  Tensor slot_pos = Tensor::empty({tokens * k}, DType::i32);
  auto counts = ops::moe_sort_by_expert(ids, experts, sorted_tokens, slot_pos);
  auto iv = ids.to_vector<int32_t>();
  std::vector<std::tuple<int32_t, int32_t, int32_t>> slots;
  std::vector<int64_t> ref_counts(experts, 0);
  for (int32_t t = 0; t < tokens; ++t) {
    for (int32_t s = 0; s < k; ++s) {
      slots.emplace_back(iv[t * k + s], t, s);
      ++ref_counts[iv[t * k + s]];
    }
  }
  std::sort(slots.begin(), slots.end());
  std::vector<int32_t> ref_sorted, ref_pos(tokens * k);
  for (size_t j = 0; j < slots.size(); ++j) {
    auto [e, t, s] = slots[j];
    ref_sorted.push_back(t);
    ref_pos[t * k + s] = static_cast<int32_t>(j);
  }
  CHECK(counts == ref_counts);
  CHECK(sorted_tokens.to_vector<int32_t>() == ref_sorted);
  CHECK(slot_pos.to_vector<int32_t>() == ref_pos);
}

TEST_CASE("moe_combine forward weights and sums each token's expert rows", "[kernels][cpu][routing]") {
  const int64_t tokens = 19, k = 2, experts = 4, dim = 7;
  Tensor ids = random_ids(tokens * k, experts, 42).view({tokens, k});
  Tensor sorted_tokens = Tensor::empty({tokens * k}, DType::i32);
  Tensor slot_pos = Tensor::empty({tokens * k}, DType::i32);
  ops::moe_sort_by_expert(ids, experts, sorted_tokens, slot_pos);
  auto pv = slot_pos.to_vector<int32_t>();
  for (DType dt : k_float_types) {
    Tensor y_sorted = random_tensor({tokens * k, dim}, dt, 43);
    Tensor weights = random_tensor({tokens, k}, dt, 44, Device::cpu(), 0.0, 1.0);
    Tensor out = poisoned({tokens, dim}, dt);
    ops::moe_combine_forward(y_sorted, slot_pos, weights, out);
    auto yv = values_of(y_sorted), wv = values_of(weights);
    std::vector<double> ref(tokens * dim, 0.0);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t s = 0; s < k; ++s) {
        for (int64_t c = 0; c < dim; ++c) ref[t * dim + c] += wv[t * k + s] * yv[pv[t * k + s] * dim + c];
      }
    }
    check(out, ref, "combine out");

    // Two addends in the same pass (the residual, the shared experts' output), also in place.
    Tensor add_a = random_tensor({tokens, dim}, dt, 46), add_b = random_tensor({tokens, dim}, dt, 47);
    std::vector<double> with_adds = ref;
    const std::vector<double> av = values_of(add_a), bv = values_of(add_b);
    for (size_t i = 0; i < with_adds.size(); ++i) with_adds[i] += av[i] + bv[i];
    ops::moe_combine_forward(y_sorted, slot_pos, weights, out, add_a, add_b);
    check(out, with_adds, "combine out + both addends");
    Tensor in_place = add_a.clone();
    ops::moe_combine_forward(y_sorted, slot_pos, weights, in_place, in_place);
    std::vector<double> with_a = ref;
    for (size_t i = 0; i < with_a.size(); ++i) with_a[i] += av[i];
    check(in_place, with_a, "combine into its own addend");
    REQUIRE_THROWS_WITH(ops::moe_combine_forward(y_sorted, slot_pos, weights, out, Tensor::zeros({tokens, dim + 1}, dt)),
                        Contains("combine add_a"));

    // Unit weights after gathering rows by sorted_tokens return k copies of the input.
    Tensor x = random_tensor({tokens, dim}, dt, 45);
    Tensor gathered = poisoned({tokens * k, dim}, dt);
    ops::gather_rows(x, sorted_tokens, gathered);
    Tensor ones = values_tensor(std::vector<double>(tokens * k, 1.0), {tokens, k}, dt);
    ops::moe_combine_forward(gathered, slot_pos, ones, out);
    auto xv = values_of(x);
    for (double& a : xv) a *= k;
    check(out, xv, "gather then combine");
  }
}

TEST_CASE("dropped slots (id -1) take no row in the sort and add nothing in the combine", "[kernels][cpu][routing]") {
  // t0 -> {2, dropped}, t1 -> {0, 2}, t2 -> {dropped, dropped}, t3 -> {0, 1}
  Tensor ids = ids_tensor({2, -1, 0, 2, -1, -1, 0, 1}, {4, 2});
  Tensor sorted_tokens = Tensor::empty({8}, DType::i32), slot_pos = Tensor::empty({8}, DType::i32);
  auto counts = ops::moe_sort_by_expert(ids, 3, sorted_tokens, slot_pos);
  CHECK(counts == std::vector<int64_t>{2, 1, 2});
  // expert 0: (t1,s0) (t3,s0); expert 1: (t3,s1); expert 2: (t0,s0) (t1,s1)
  auto sorted = sorted_tokens.to_vector<int32_t>();
  CHECK(std::vector<int32_t>(sorted.begin(), sorted.begin() + 5) == std::vector<int32_t>{1, 3, 3, 0, 1});
  CHECK(slot_pos.to_vector<int32_t>() == std::vector<int32_t>{3, -1, 0, 4, -1, -1, 1, 2});

  const int64_t dim = 3;
  for (DType dt : k_float_types) {
    for (int64_t rows : {5, 7}) {  // exactly the rows used, and two spare rows
      Tensor y_sorted = random_tensor({rows, dim}, dt, 46);
      Tensor weights = values_tensor({0.5, 0.25, 0.75, 2.0, 0.125, 4.0, 1.5, -1.0}, {4, 2}, dt);
      Tensor out = poisoned({4, dim}, dt);
      ops::moe_combine_forward(y_sorted, slot_pos, weights, out);
      auto y = values_of(y_sorted);
      std::vector<double> ref(4 * dim);
      for (int64_t c = 0; c < dim; ++c) {
        ref[0 * dim + c] = 0.5 * y[3 * dim + c];
        ref[1 * dim + c] = 0.75 * y[0 * dim + c] + 2.0 * y[4 * dim + c];
        ref[2 * dim + c] = 0.0;  // every slot dropped, weights ignored
        ref[3 * dim + c] = 1.5 * y[1 * dim + c] - 1.0 * y[2 * dim + c];
      }
      check(out, ref, "combine out with drops, rows " + std::to_string(rows));

      Tensor dout = random_tensor({4, dim}, dt, 47);
      Tensor dy = poisoned({rows, dim}, dt), dweights = poisoned({4, 2}, dt);
      ops::moe_combine_backward(y_sorted, slot_pos, weights, dout, dy, dweights);
      auto g = values_of(dout);
      std::vector<double> ref_dy(static_cast<size_t>(rows * dim), 0.0);  // spare rows stay zero
      std::vector<double> ref_dw(8, 0.0);                                 // dropped slots get 0
      const int32_t pos[8] = {3, -1, 0, 4, -1, -1, 1, 2};
      const double w[8] = {0.5, 0.25, 0.75, 2.0, 0.125, 4.0, 1.5, -1.0};
      for (int64_t n = 0; n < 8; ++n) {
        if (pos[n] < 0) continue;
        const int64_t t = n / 2;
        for (int64_t c = 0; c < dim; ++c) {
          ref_dy[pos[n] * dim + c] = w[n] * g[t * dim + c];
          ref_dw[n] += g[t * dim + c] * y[pos[n] * dim + c];
        }
      }
      check(dy, ref_dy, "combine dy_sorted with drops, rows " + std::to_string(rows));
      check(dweights, ref_dw, "combine dweights with drops, rows " + std::to_string(rows));
    }
  }
}

namespace {

// The dispatch's permutation written out independently of the ops: slots with a row sorted by
// (expert, token, slot); sorted_tokens padded with -1, slot_pos -1 for dropped slots.
struct PermuteRef {
  std::vector<int32_t> sorted_tokens, slot_pos, offsets;
};

PermuteRef permute_reference(const std::vector<int32_t>& ids, int64_t k, int64_t experts) {
  const auto slots = static_cast<int64_t>(ids.size());
  std::vector<std::tuple<int32_t, int64_t, int64_t>> order;  // (expert, token, slot)
  for (int64_t n = 0; n < slots; ++n) {
    if (ids[n] >= 0) order.emplace_back(ids[n], n / k, n % k);
  }
  std::sort(order.begin(), order.end());
  PermuteRef ref{std::vector<int32_t>(slots, -1), std::vector<int32_t>(slots, -1),
                 std::vector<int32_t>(experts + 1, 0)};
  for (size_t r = 0; r < order.size(); ++r) {
    const auto [e, t, s] = order[r];
    ref.sorted_tokens[r] = static_cast<int32_t>(t);
    ref.slot_pos[t * k + s] = static_cast<int32_t>(r);
    ++ref.offsets[e + 1];
  }
  for (int64_t e = 0; e < experts; ++e) ref.offsets[e + 1] += ref.offsets[e];
  return ref;
}

}  // namespace

TEST_CASE("moe_permute_rows on a hand-made example: rows in (expert, token, slot) order, zero padding",
          "[kernels][cpu][routing]") {
  // t0 -> {2, dropped}, t1 -> {0, 2}, t2 -> {dropped, dropped}, t3 -> {0, 1}; expert 3 gets nothing
  Tensor ids = ids_tensor({2, -1, 0, 2, -1, -1, 0, 1}, {4, 2});
  for (DType dt : k_float_types) {
    Tensor x = values_tensor({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2}, dt);  // row t = (10t, 10t+1)
    Tensor sorted_tokens = poisoned({8}, DType::i32), slot_pos = poisoned({8}, DType::i32);
    Tensor offsets = poisoned({5}, DType::i32), x_sorted = poisoned({7, 2}, dt);  // 5 rows used, 2 padding
    ops::moe_permute_rows(ids, x, 4, sorted_tokens, slot_pos, offsets, x_sorted);
    CHECK(offsets.to_vector<int32_t>() == std::vector<int32_t>{0, 2, 3, 5, 5});
    CHECK(sorted_tokens.to_vector<int32_t>() == std::vector<int32_t>{1, 3, 3, 0, 1, -1, -1, -1});
    CHECK(slot_pos.to_vector<int32_t>() == std::vector<int32_t>{3, -1, 0, 4, -1, -1, 1, 2});
    CHECK(values_of(x_sorted) == std::vector<double>{10, 11, 30, 31, 30, 31, 0, 1, 10, 11, 0, 0, 0, 0});
  }
  Tensor x = random_tensor({2, 3}, DType::f32, 60);
  Tensor sorted_tokens = Tensor::empty({4}, DType::i32), slot_pos = Tensor::empty({4}, DType::i32);
  Tensor offsets = Tensor::empty({5}, DType::i32), x_sorted = Tensor::empty({4, 3}, DType::f32);
  REQUIRE_THROWS_WITH(ops::moe_permute_rows(ids_tensor({0, 1, 4, 2}, {2, 2}), x, 4, sorted_tokens, slot_pos, offsets,
                                            x_sorted),
                      Contains("expert id 4 of token 1 (slot 0) is outside [0,4)"));
  Tensor too_many = Tensor::empty({5, 3}, DType::f32);
  REQUIRE_THROWS_WITH(ops::moe_permute_rows(ids_tensor({0, 1, 3, 2}, {2, 2}), x, 4, sorted_tokens, slot_pos, offsets,
                                            too_many),
                      Contains("must be [N,3] with N <= 4 slots"));
}

TEST_CASE("moe_permute_rows equals the sort then the gather: drops, empty and overloaded experts, padding",
          "[kernels][cpu][routing]") {
  const int64_t dim = 5;
  for (int64_t k : {1, 3}) {
    for (int64_t tokens : {1, 19, 300}) {
      for (int pattern = 0; pattern < 4; ++pattern) {  // random with drops; odd experts only; all to one; all dropped
        const int64_t experts = 6, slots = tokens * k;
        const auto seed = static_cast<uint64_t>(61 + 100 * tokens + 10 * k + pattern);
        std::vector<int32_t> iv = random_ids(slots, experts, seed).to_vector<int32_t>();
        for (size_t n = 0; n < iv.size(); ++n) {
          if (pattern == 0 && n % 4 == 1) iv[n] = -1;
          if (pattern == 1) iv[n] |= 1;
          if (pattern == 2) iv[n] = static_cast<int32_t>(experts - 1);
          if (pattern == 3) iv[n] = -1;
        }
        const PermuteRef ref = permute_reference(iv, k, experts);
        const int64_t used = ref.offsets.back();
        // every slot; a capacity-like bound above the rows used; exactly the rows used; fewer (not kept); none
        for (int64_t rows : {slots, std::min(slots, used + 2), used, used / 2, int64_t{0}}) {
          for (DType dt : k_float_types) {
            INFO("k " << k << " tokens " << tokens << " pattern " << pattern << " rows " << rows << " "
                      << dtype_name(dt));
            Tensor ids = ids_tensor(iv, {tokens, k});
            Tensor x = random_tensor({tokens, dim}, dt, static_cast<uint64_t>(62 + 100 * tokens + k));
            Tensor sorted_tokens = poisoned({slots}, DType::i32), slot_pos = poisoned({slots}, DType::i32);
            Tensor offsets = poisoned({experts + 1}, DType::i32), x_sorted = poisoned({rows, dim}, dt);
            ops::moe_permute_rows(ids, x, experts, sorted_tokens, slot_pos, offsets, x_sorted);
            REQUIRE(sorted_tokens.to_vector<int32_t>() == ref.sorted_tokens);
            REQUIRE(slot_pos.to_vector<int32_t>() == ref.slot_pos);
            REQUIRE(offsets.to_vector<int32_t>() == ref.offsets);
            const std::vector<double> xv = values_of(x), got = values_of(x_sorted);
            for (int64_t r = 0; r < rows; ++r) {
              const int32_t t = ref.sorted_tokens[static_cast<size_t>(r)];
              for (int64_t c = 0; c < dim; ++c) {
                INFO("row " << r << " token " << t << " column " << c);
                REQUIRE(got[static_cast<size_t>(r * dim + c)] == (t < 0 ? 0.0 : xv[static_cast<size_t>(t * dim + c)]));
              }
            }

            // Bit for bit the two ops it fuses.
            Tensor sorted2 = poisoned({slots}, DType::i32), pos2 = poisoned({slots}, DType::i32);
            Tensor offsets2 = poisoned({experts + 1}, DType::i32), gathered = poisoned({rows, dim}, dt);
            ops::moe_sort_by_expert(ids, experts, sorted2, pos2, offsets2);
            if (rows > 0) ops::gather_rows(x, sorted2.rows(0, rows), gathered);
            REQUIRE(values_of(gathered) == got);
            // The backward's redispatch makes the same rows from slot_pos, where every used row is kept.
            if (rows > 0 && rows >= used) {
              Tensor scattered = poisoned({rows, dim}, dt);
              ops::moe_scatter_rows(x, slot_pos, scattered);
              REQUIRE(values_of(scattered) == got);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("the combine's backward without weights, then the rows' gradients back to the slots, with drops",
          "[kernels][cpu][routing]") {
  // The slots of the test above: t0 -> {2, dropped}, t1 -> {0, 2}, t2 -> {dropped, dropped}, t3 -> {0, 1}.
  Tensor slot_pos = ids_tensor({3, -1, 0, 4, -1, -1, 1, 2}, {8});
  const int64_t dim = 3;
  for (DType dt : k_float_types) {
    for (int64_t rows : {5, 7}) {  // exactly the rows used, and two spare rows
      Tensor weights = values_tensor({0.5, 0.25, 0.75, 2.0, 0.125, 4.0, 1.5, -1.0}, {4, 2}, dt);
      Tensor dout = random_tensor({4, dim}, dt, 48);
      Tensor dy = poisoned({rows, dim}, dt), row_weights = poisoned({rows}, dt);
      ops::moe_combine_backward_unweighted(slot_pos, weights, dout, dy, row_weights);
      auto g = values_of(dout);
      std::vector<double> ref_dy(static_cast<size_t>(rows * dim), 0.0), ref_w(static_cast<size_t>(rows), 0.0);
      const int32_t pos[8] = {3, -1, 0, 4, -1, -1, 1, 2};
      const double w[8] = {0.5, 0.25, 0.75, 2.0, 0.125, 4.0, 1.5, -1.0};
      for (int64_t n = 0; n < 8; ++n) {
        if (pos[n] < 0) continue;
        ref_w[static_cast<size_t>(pos[n])] = w[n];
        for (int64_t c = 0; c < dim; ++c) ref_dy[pos[n] * dim + c] = g[(n / 2) * dim + c];
      }
      check(dy, ref_dy, "unweighted dy_sorted, rows " + std::to_string(rows));
      check(row_weights, ref_w, "row weights, rows " + std::to_string(rows));

      Tensor row_values = random_tensor({rows}, dt, 49), slots = poisoned({4, 2}, dt);
      ops::moe_gather_slots(row_values, slot_pos, slots);
      auto v = values_of(row_values);
      std::vector<double> ref_slots(8, 0.0);  // dropped slots get 0
      for (int64_t n = 0; n < 8; ++n) ref_slots[n] = pos[n] >= 0 ? v[static_cast<size_t>(pos[n])] : 0.0;
      check(slots, ref_slots, "gathered slots, rows " + std::to_string(rows));
    }
  }
  Tensor too_few = poisoned({4}, DType::f64);
  REQUIRE_THROWS_WITH(ops::moe_gather_slots(values_tensor({1, 2, 3, 4}, {4}, DType::f64), slot_pos, too_few),
                      Contains("gather slots slot_pos"));
}

TEST_CASE("the weighted activation backward is the backward of w * act, with <g, act> for the weights",
          "[kernels][cpu][activations]") {
  const int64_t rows = 5, width = 7;
  for (ops::Activation act :
       {ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu}) {
    for (DType dt : k_float_types) {
      INFO(ops::activation_name(act) << " " << dtype_name(dt));
      const int64_t in_width = ops::is_gated(act) ? 2 * width : width;
      Tensor x = random_tensor({rows, in_width}, dt, 50), g = random_tensor({rows, width}, dt, 51);
      Tensor w = values_tensor({0.5, -1.25, 0.0, 2.0, 0.75}, {rows}, dt);
      Tensor dx = poisoned({rows, in_width}, dt), aw = poisoned({rows, width}, dt), dw = poisoned({rows}, dt);
      ops::activation_backward_weighted(act, x, g, w, dx, aw, dw);
      // The reference from the plain ops: a = act(x); w * g through activation_backward; <g, a>.
      Tensor a = poisoned({rows, width}, dt), wg = poisoned({rows, width}, dt), ref_dx = poisoned({rows, in_width}, dt);
      ops::activation_forward(act, x, a);
      const auto av = values_of(a), gv = values_of(g), wv = values_of(w);
      std::vector<double> wgv(gv.size()), ref_aw(av.size()), ref_dw(static_cast<size_t>(rows), 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < width; ++c) {
          const size_t i = static_cast<size_t>(r * width + c);
          wgv[i] = wv[r] * gv[i];
          ref_aw[i] = wv[r] * av[i];
          ref_dw[static_cast<size_t>(r)] += gv[i] * av[i];
        }
      }
      wg = values_tensor(wgv, {rows, width}, dt);
      ops::activation_backward(act, x, wg, ref_dx);
      check(dx, values_of(ref_dx), "dx");
      check(aw, ref_aw, "w * act(x)");
      check(dw, ref_dw, "<g, act(x)>");
    }
  }
}

TEST_CASE("adamw matches a step computed by hand", "[kernels][cpu][optim]") {
  for (DType dt : k_float_types) {
    ops::AdamWParams p;
    p.lr = 0.125f;
    p.beta1 = 0.5f;
    p.beta2 = 0.75f;
    p.eps = 1e-8f;
    p.weight_decay = 0.25f;
    // Step 1 from zero moments: m = 0.25, v = 0.0625, mhat = 0.5, vhat = 0.25, so the Adam
    // ratio is 1 and p = 2 - 0.125 * (1 + 0.25 * 2) = 1.8125. A zero gradient only decays.
    p.step = 1;
    Tensor param = values_tensor({2.0, 4.0}, {2}, dt), grad = values_tensor({0.5, 0.0}, {2}, dt);
    Tensor m = values_tensor({0.0, 0.0}, {2}, dt), v = values_tensor({0.0, 0.0}, {2}, dt);
    ops::adamw_step(param, grad, m, v, p);
    require_close(values_of(param), {1.8125, 3.875}, 1e-7, 1e-7, "adamw step 1 param");
    require_close(values_of(m), {0.25, 0.0}, 1e-7, 1e-7, "adamw step 1 m");
    require_close(values_of(v), {0.0625, 0.0}, 1e-7, 1e-7, "adamw step 1 v");

    // Step 2 from m = 0.1, v = 0.04, g = -1: m = -0.45, v = 0.28, mhat = -0.45 / 0.75 = -0.6,
    // vhat = 0.28 / 0.4375 = 0.64, ratio -0.75, p = -1 - 0.125 * (-0.75 - 0.25) = -0.875.
    p.step = 2;
    param = values_tensor({-1.0}, {1}, dt);
    grad = values_tensor({-1.0}, {1}, dt);
    m = values_tensor({0.1}, {1}, dt);
    v = values_tensor({0.04}, {1}, dt);
    ops::adamw_step(param, grad, m, v, p);
    require_close(values_of(param), {-0.875}, 1e-6, 1e-6, "adamw step 2 param");
    require_close(values_of(m), {-0.45}, 1e-6, 1e-6, "adamw step 2 m");
    require_close(values_of(v), {0.28}, 1e-6, 1e-6, "adamw step 2 v");
  }
}

TEST_CASE("bad inputs to the CPU ops name the problem", "[kernels][cpu][errors]") {
  const DType dt = DType::f64;
  Tensor logits = random_tensor({3, 4}, dt, 50);
  Tensor probs = Tensor::empty({3, 4}, dt);
  Tensor ids5 = Tensor::empty({3, 5}, DType::i32), w5 = Tensor::empty({3, 5}, dt);
  ops::TopKOptions top5;
  top5.k = 5;
  REQUIRE_THROWS_WITH(ops::router_topk_forward(logits, Tensor(), top5, probs, ids5, w5),
                      Contains("top-k 5 must be between 1 and the expert count 4"));

  Tensor sorted_tokens = Tensor::empty({4}, DType::i32), slot_pos = Tensor::empty({4}, DType::i32);
  REQUIRE_THROWS_WITH(ops::moe_sort_by_expert(ids_tensor({0, 1, 4, 2}, {2, 2}), 4, sorted_tokens, slot_pos),
                      Contains("expert id 4 of token 1 (slot 0) is outside [0,4)"));
  // -1 is a dropped slot; anything below is an error.
  REQUIRE_THROWS_WITH(ops::moe_sort_by_expert(ids_tensor({0, -2, 3, 2}, {2, 2}), 4, sorted_tokens, slot_pos),
                      Contains("expert id -2 of token 0 (slot 1) is outside [0,4)"));

  Tensor table = random_tensor({11, 3}, dt, 51), emb = Tensor::empty({3, 3}, dt);
  REQUIRE_THROWS_WITH(ops::embedding_forward(ids_tensor({0, 5, 11}, {3}), table, emb),
                      Contains("token id 11 at position 2 is outside the vocabulary [0,11)"));

  Tensor loss = Tensor::empty({3}, dt), lse = Tensor::empty({3}, dt);
  REQUIRE_THROWS_WITH(ops::cross_entropy_forward(logits, ids_tensor({0, 4, -1}, {3}), loss, lse),
                      Contains("target 4 of row 1 is outside the vocabulary [0,4)"));

  // Vocabulary shards: ids and targets are checked against the whole vocabulary, and the shard
  // must lie inside it.
  Tensor table_local = random_tensor({5, 3}, dt, 56);
  REQUIRE_THROWS_WITH(ops::embedding_forward(ids_tensor({7, 11, 0}, {3}), table_local, emb, {5, 11}),
                      Contains("token id 11 at position 1 is outside the vocabulary [0,11)"));
  REQUIRE_THROWS_WITH(ops::embedding_forward(ids_tensor({7, 3, -1}, {3}), table_local, emb, {5, 11}),
                      Contains("token id -1 at position 2 is outside the vocabulary [0,11)"));
  Tensor dtable_local = Tensor::zeros({5, 3}, dt);
  REQUIRE_THROWS_WITH(ops::embedding_backward(ids_tensor({12, 1, 0}, {3}), emb, dtable_local, {5, 11}),
                      Contains("token id 12 at position 0 is outside the vocabulary [0,11)"));
  REQUIRE_THROWS_WITH(ops::embedding_forward(ids_tensor({7, 8, 9}, {3}), table_local, emb, {8, 11}),
                      Contains("embedding: vocabulary shard [8,13) is outside the vocabulary [0,11)"));
  REQUIRE_THROWS_WITH(ops::embedding_forward(ids_tensor({7, 8, 9}, {3}), table_local, emb, {3, 0}),
                      Contains("an unsharded vocabulary must start at 0, got start 3"));
  REQUIRE_THROWS_WITH(ops::cross_entropy_forward(logits, ids_tensor({0, 12, -1}, {3}), loss, lse, {4, 12}),
                      Contains("target 12 of row 1 is outside the vocabulary [0,12)"));
  Tensor dlogits = Tensor::empty({3, 4}, dt);
  REQUIRE_THROWS_WITH(ops::cross_entropy_backward(logits, ids_tensor({13, 2, -1}, {3}), lse, 1.0f, dlogits, {4, 12}),
                      Contains("target 13 of row 0 is outside the vocabulary [0,12)"));
  REQUIRE_THROWS_WITH(ops::cross_entropy_backward(logits, ids_tensor({1, 2, -1}, {3}), lse, 1.0f, dlogits, {10, 12}),
                      Contains("cross-entropy: vocabulary shard [10,14) is outside the vocabulary [0,12)"));

  Tensor gathered = Tensor::empty({2, 4}, dt);
  REQUIRE_THROWS_WITH(ops::gather_rows(logits, ids_tensor({2, 3}, {2}), gathered),
                      Contains("gather_rows: index 3 at position 1 is outside the rows [0,3)"));

  Tensor y_sorted = random_tensor({4, 3}, dt, 52), weights = random_tensor({2, 2}, dt, 53);
  Tensor out = Tensor::empty({2, 3}, dt);
  REQUIRE_THROWS_WITH(ops::moe_combine_forward(y_sorted, ids_tensor({0, 1, 9, 2}, {4}), weights, out),
                      Contains("slot 2 points at row 9, outside [0,4)"));
  REQUIRE_THROWS_WITH(ops::moe_combine_forward(y_sorted, ids_tensor({0, -3, 1, 2}, {4}), weights, out),
                      Contains("slot 1 points at row -3, outside [0,4)"));
  // Three rows: fewer than the four slots is fine, but a slot may not name row 3.
  Tensor y3 = random_tensor({3, 3}, dt, 55);
  REQUIRE_THROWS_WITH(ops::moe_combine_forward(y3, ids_tensor({0, -1, 3, 2}, {4}), weights, out),
                      Contains("slot 2 points at row 3, outside [0,3)"));

  Tensor ints = Tensor::zeros({4}, DType::i32);
  REQUIRE_THROWS_WITH(ops::scale(ints, 2.0f), Contains("scale: the CPU backend supports f32 and f64, got i32"));
  REQUIRE_THROWS_WITH(ops::sum(ints), Contains("sum: the CPU backend supports f32 and f64, got i32"));

  Tensor half = Tensor::zeros({3, 4}, DType::bf16), c = Tensor::empty({3, 3}, DType::bf16);
  REQUIRE_THROWS_WITH(ops::matmul(half, false, half, true, c), Contains("must be f32 or f64 on the CPU, got bf16"));

  Tensor param = random_tensor({2}, dt, 54), m = Tensor::zeros({2}, dt), v = Tensor::zeros({2}, dt);
  ops::AdamWParams p;
  p.step = 0;
  REQUIRE_THROWS_WITH(ops::adamw_step(param, param, m, v, p), Contains("step must be 1-based, got 0"));
}

// CPU routing ops against direct formulas: the top-k router's options (sigmoid + bias, group
// limits, Mixtral order) on hand-made examples and against a brute-force reference, expert
// choice, both capacity drop orders, the noisy and row gates, and the messages of bad input.
#include <algorithm>
#include <cmath>
#include <numeric>

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

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::vector<double> softmax_rows(const std::vector<double>& logits, int64_t rows, int64_t cols) {
  std::vector<double> out(logits.size());
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (int64_t c = 0; c < cols; ++c) total += std::exp(logits[r * cols + c]);
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = std::exp(logits[r * cols + c]) / total;
  }
  return out;
}

struct TopK {
  Tensor scores, ids, weights;
};

TopK topk(const Tensor& logits, const Tensor& bias, const ops::TopKOptions& o) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  TopK out{poisoned({tokens, experts}, logits.dtype()), Tensor::empty({tokens, o.k}, DType::i32),
           poisoned({tokens, o.k}, logits.dtype())};
  ops::router_topk_forward(logits, bias, o, out.scores, out.ids, out.weights);
  return out;
}

ops::TopKOptions options(int64_t k, ops::ScoreFunction score = ops::ScoreFunction::softmax, bool renormalize = false) {
  ops::TopKOptions o;
  o.k = k;
  o.score = score;
  o.renormalize = renormalize;
  return o;
}

// The options of the brute-force test: 0 plain, 1 biased, 2 renormalised, 3 Mixtral order (softmax),
// 4 four groups of 3 (top 2), 5 six groups of 2 (top 3), biased; k 1 or 3.
ops::TopKOptions variant_options(int variant, ops::ScoreFunction score) {
  ops::TopKOptions o = options(variant % 2 ? 3 : 1, score, variant == 2);
  o.softmax_after_topk = variant == 3 && score == ops::ScoreFunction::softmax;
  if (variant >= 4) {
    o.num_groups = variant == 4 ? 4 : 6;
    o.top_groups = variant == 4 ? 2 : 3;
  }
  return o;
}

// Brute force: keys in double, groups and experts ordered by std::stable_sort (ties to the
// lower index), weights from the unbiased scores.
struct Reference {
  std::vector<int32_t> ids;
  std::vector<double> scores, weights;
};
Reference reference_topk(const std::vector<double>& logits, const std::vector<double>& bias, int64_t tokens,
                         int64_t experts, const ops::TopKOptions& o) {
  Reference ref;
  const bool sig = o.score == ops::ScoreFunction::sigmoid;
  ref.scores = softmax_rows(logits, tokens, experts);
  if (sig) {
    for (size_t i = 0; i < logits.size(); ++i) ref.scores[i] = sigmoid(logits[i]);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> key(static_cast<size_t>(experts));
    for (int64_t e = 0; e < experts; ++e) key[e] = ref.scores[t * experts + e] + (bias.empty() ? 0.0 : bias[e]);
    std::vector<int32_t> allowed;
    if (o.num_groups > 0) {
      const int64_t size = experts / o.num_groups;
      std::vector<int32_t> groups(static_cast<size_t>(o.num_groups));
      std::iota(groups.begin(), groups.end(), 0);
      auto group_max = [&](int32_t g) { return *std::max_element(key.begin() + g * size, key.begin() + (g + 1) * size); };
      std::stable_sort(groups.begin(), groups.end(), [&](int32_t a, int32_t b) { return group_max(a) > group_max(b); });
      for (int64_t e = 0; e < experts; ++e) {
        if (std::find(groups.begin(), groups.begin() + o.top_groups, e / size) != groups.begin() + o.top_groups) {
          allowed.push_back(static_cast<int32_t>(e));
        }
      }
    } else {
      allowed.resize(static_cast<size_t>(experts));
      std::iota(allowed.begin(), allowed.end(), 0);
    }
    std::stable_sort(allowed.begin(), allowed.end(), [&](int32_t a, int32_t b) { return key[a] > key[b]; });
    double total = 0, logit_total = 0;
    for (int64_t s = 0; s < o.k; ++s) {
      total += ref.scores[t * experts + allowed[s]];
      logit_total += std::exp(logits[t * experts + allowed[s]]);
    }
    for (int64_t s = 0; s < o.k; ++s) {
      const int64_t i = t * experts + allowed[s];
      ref.ids.push_back(allowed[s]);
      if (o.softmax_after_topk) {
        ref.weights.push_back(std::exp(logits[i]) / logit_total);
      } else {
        ref.weights.push_back(ref.scores[i] / (o.renormalize || sig ? total : 1.0));
      }
    }
  }
  return ref;
}

}  // namespace

TEST_CASE("sigmoid router: the bias changes the choice, not the weights", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    for (bool renormalize : {false, true}) {  // sigmoid weights are renormalised either way
      std::vector<double> lv = {2.0, 1.0, 0.0, -1.0,  // keys 0.881 0.731 0.8 0.769: 0 then 2
                                0.0, 0.0, 0.0, 0.0};  // keys 0.5 0.5 0.8 1.0: 3 then 2
      Tensor logits = values_tensor(lv, {2, 4}, dt);
      Tensor bias = values_tensor({0.0, 0.0, 0.3, 0.5}, {4}, dt);
      TopK out = topk(logits, bias, options(2, ops::ScoreFunction::sigmoid, renormalize));
      CHECK(out.ids.to_vector<int32_t>() == std::vector<int32_t>{0, 2, 3, 2});
      std::vector<double> s(lv.size());
      for (size_t i = 0; i < lv.size(); ++i) s[i] = sigmoid(lv[i]);
      check(out.scores, s, "sigmoid scores");
      check(out.weights, {s[0] / (s[0] + s[2]), s[2] / (s[0] + s[2]), 0.5, 0.5}, "sigmoid weights");

      TopK unbiased = topk(logits, Tensor(), options(2, ops::ScoreFunction::sigmoid, renormalize));
      CHECK(unbiased.ids.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 0, 1});
      check(unbiased.weights, {s[0] / (s[0] + s[1]), s[1] / (s[0] + s[1]), 0.5, 0.5}, "unbiased sigmoid weights");
    }
    // Softmax scores with a bias: selection moves, weights stay the plain probabilities.
    std::vector<double> lv = {1.0, 0.9, 0.0};
    Tensor logits = values_tensor(lv, {1, 3}, dt);
    TopK out = topk(logits, values_tensor({0.0, -0.5, 0.5}, {3}, dt), options(1));
    auto p = softmax_rows(lv, 1, 3);  // keys 0.44 -0.10 0.66
    CHECK(out.ids.to_vector<int32_t>() == std::vector<int32_t>{2});
    check(out.weights, {p[2]}, "softmax weight under bias");
  }
}

TEST_CASE("group-limited router picks inside the best groups", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    // 6 experts in 3 groups {0,1} {2,3} {4,5}; top 2 groups, then top 3 experts.
    std::vector<double> lv = {3.0, -2.0, 2.5, 2.4, 2.45, -3.0,  // group maxima 3.0 2.5 2.45: groups 0, 1
                              1.0, 0.0, 0.0, 1.0, 1.0, 0.0};    // equal maxima: groups 0, 1 (lower)
    Tensor logits = values_tensor(lv, {2, 6}, dt);
    ops::TopKOptions o = options(3);
    TopK free = topk(logits, Tensor(), o);
    CHECK(free.ids.to_vector<int32_t>() == std::vector<int32_t>{0, 2, 4, 0, 3, 4});
    o.num_groups = 3;
    o.top_groups = 2;
    TopK grouped = topk(logits, Tensor(), o);
    CHECK(grouped.ids.to_vector<int32_t>() == std::vector<int32_t>{0, 2, 3, 0, 3, 1});
    auto p = softmax_rows(lv, 2, 6);
    check(grouped.weights, {p[0], p[2], p[3], p[6], p[9], p[7]}, "grouped weights");
    check(grouped.scores, p, "grouped scores");

    // Groups rank by the biased score: the bias lifts group 1 above group 0 (sigmoid, k = 1).
    Tensor sig_logits = values_tensor({1.0, 0.0, 0.9, 0.0}, {1, 4}, dt);
    ops::TopKOptions g = options(1, ops::ScoreFunction::sigmoid);
    g.num_groups = 2;
    g.top_groups = 1;
    CHECK(topk(sig_logits, Tensor(), g).ids.to_vector<int32_t>() == std::vector<int32_t>{0});
    TopK lifted = topk(sig_logits, values_tensor({0.0, 0.0, 0.1, 0.0}, {4}, dt), g);
    CHECK(lifted.ids.to_vector<int32_t>() == std::vector<int32_t>{2});
    check(lifted.weights, {1.0}, "one renormalised sigmoid weight");
  }
}

TEST_CASE("Mixtral order: weights are a softmax over the selected logits", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    std::vector<double> lv = {1.0, 3.0, 2.0, -1.0, 0.5, 0.5, -2.0, 4.0};
    Tensor logits = values_tensor(lv, {2, 4}, dt);
    ops::TopKOptions o = options(2);
    o.softmax_after_topk = true;
    TopK out = topk(logits, Tensor(), o);
    CHECK(out.ids.to_vector<int32_t>() == std::vector<int32_t>{1, 2, 3, 0});
    const double a = std::exp(3.0) + std::exp(2.0), b = std::exp(4.0) + std::exp(0.5);
    check(out.weights, {std::exp(3.0) / a, std::exp(2.0) / a, std::exp(4.0) / b, std::exp(0.5) / b}, "mixtral weights");
    check(out.scores, softmax_rows(lv, 2, 4), "mixtral scores are the full softmax");
  }
}

TEST_CASE("router options on random logits match a brute-force reference", "[kernels][cpu][routing]") {
  const int64_t tokens = 19, experts = 12;
  for (DType dt : k_float_types) {
    for (auto score : {ops::ScoreFunction::softmax, ops::ScoreFunction::sigmoid}) {
      for (int variant = 0; variant < 6; ++variant) {
        const ops::TopKOptions o = variant_options(variant, score);
        const bool biased = variant == 1 || variant == 5;
        INFO("score " << static_cast<int>(score) << " variant " << variant);
        Tensor logits = random_tensor({tokens, experts}, dt, 60 + variant, Device::cpu(), -3.0, 3.0);
        Tensor bias = biased ? random_tensor({experts}, dt, 70 + variant, Device::cpu(), -0.3, 0.3) : Tensor();
        TopK out = topk(logits, bias, o);
        Reference ref = reference_topk(values_of(logits), biased ? values_of(bias) : std::vector<double>{}, tokens,
                                       experts, o);
        CHECK(out.ids.to_vector<int32_t>() == ref.ids);
        check(out.scores, ref.scores, "scores");
        check(out.weights, ref.weights, "weights");
      }
    }
  }
}

TEST_CASE("router statistics: the pass's score sums and routed counts", "[kernels][cpu][routing]") {
  const int64_t experts = 12;
  for (DType dt : k_float_types) {
    for (auto score : {ops::ScoreFunction::softmax, ops::ScoreFunction::sigmoid}) {
      for (int variant = 0; variant < 6; ++variant) {
        for (int64_t tokens : {0, 1, 19}) {
          const ops::TopKOptions o = variant_options(variant, score);
          const bool biased = variant == 1 || variant == 5;
          INFO(dtype_name(dt) << " score " << static_cast<int>(score) << " variant " << variant << " tokens " << tokens);
          Tensor logits = random_tensor({tokens, experts}, dt, 80 + variant, Device::cpu(), -3.0, 3.0);
          Tensor bias = biased ? random_tensor({experts}, dt, 90 + variant, Device::cpu(), -0.3, 0.3) : Tensor();
          TopK out{poisoned({tokens, experts}, dt), Tensor::empty({tokens, o.k}, DType::i32), poisoned({tokens, o.k}, dt)};
          Tensor sums = poisoned({experts}, dt);
          Tensor counts = Tensor::from_vector(std::vector<int64_t>(experts, -7), {experts}, DType::i64);
          ops::router_topk_forward(logits, bias, o, out.scores, out.ids, out.weights, sums, counts);
          const TopK plain = topk(logits, bias, o);  // the statistics change nothing else
          CHECK(out.ids.to_vector<int32_t>() == plain.ids.to_vector<int32_t>());
          CHECK(values_of(out.scores) == values_of(plain.scores));
          CHECK(values_of(out.weights) == values_of(plain.weights));
          const Reference ref = reference_topk(values_of(logits), biased ? values_of(bias) : std::vector<double>{},
                                               tokens, experts, o);
          std::vector<double> ref_sums(static_cast<size_t>(experts), 0.0);
          std::vector<int64_t> ref_counts(static_cast<size_t>(experts), 0);
          for (int64_t t = 0; t < tokens; ++t)
            for (int64_t e = 0; e < experts; ++e) ref_sums[e] += ref.scores[t * experts + e];
          for (int32_t id : ref.ids) ++ref_counts[static_cast<size_t>(id)];
          check(sums, ref_sums, "score sums");
          CHECK(counts.to_vector<int64_t>() == ref_counts);
        }
      }
    }
  }
  // Shape, dtype and device of the statistics are checked.
  Tensor logits = random_tensor({3, 6}, DType::f32, 91), scores = Tensor::empty({3, 6}, DType::f32);
  Tensor ids = Tensor::empty({3, 2}, DType::i32), weights = Tensor::empty({3, 2}, DType::f32);
  Tensor sums = Tensor::empty({6}, DType::f32), counts = Tensor::empty({6}, DType::i64);
  Tensor short_sums = Tensor::empty({5}, DType::f32), f32_counts = Tensor::empty({6}, DType::f32);
  REQUIRE_THROWS_WITH(ops::router_topk_forward(logits, Tensor(), options(2), scores, ids, weights, short_sums, counts),
                      Contains("router score_sums has shape [5], expected [6]"));
  REQUIRE_THROWS_WITH(ops::router_topk_forward(logits, Tensor(), options(2), scores, ids, weights, sums, f32_counts),
                      Contains("router counts"));
}

TEST_CASE("router backward: a score-gradient row counts once for every token", "[kernels][cpu][routing]") {
  const int64_t tokens = 9, experts = 8;
  for (DType dt : k_float_types) {
    for (auto score : {ops::ScoreFunction::softmax, ops::ScoreFunction::sigmoid}) {
      for (int variant : {0, 2, 3, 4}) {
        const ops::TopKOptions o = variant_options(variant, score);
        INFO(dtype_name(dt) << " score " << static_cast<int>(score) << " variant " << variant);
        Tensor logits = random_tensor({tokens, experts}, dt, 100 + variant, Device::cpu(), -3.0, 3.0);
        const TopK out = topk(logits, Tensor(), o);
        Tensor dweights = random_tensor({tokens, o.k}, dt, 110 + variant);
        Tensor dscores = random_tensor({tokens, experts}, dt, 120 + variant);
        Tensor row = random_tensor({experts}, dt, 130 + variant);
        std::vector<double> spread = values_of(dscores), row_only(static_cast<size_t>(tokens * experts));
        const std::vector<double> row_v = values_of(row);
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t e = 0; e < experts; ++e) {
            spread[t * experts + e] += row_v[e];
            row_only[t * experts + e] = row_v[e];
          }
        }
        auto backward = [&](const Tensor& ds, const Tensor& ds_row) {
          Tensor dlogits = poisoned({tokens, experts}, dt);
          ops::router_topk_backward(logits, out.scores, out.ids, out.weights, dweights, ds, ds_row, o, dlogits);
          return values_of(dlogits);
        };
        const Tolerance tol = tolerance_for(dt);
        require_close(backward(dscores, row), backward(values_tensor(spread, {tokens, experts}, dt), Tensor()),
                      tol.atol, tol.rtol, "dscores + row");
        require_close(backward(Tensor(), row), backward(values_tensor(row_only, {tokens, experts}, dt), Tensor()),
                      tol.atol, tol.rtol, "row alone");
      }
    }
  }
  Tensor logits = random_tensor({3, 6}, DType::f64, 92);
  const TopK out = topk(logits, Tensor(), options(2));
  Tensor dlogits = Tensor::empty({3, 6}, DType::f64);
  REQUIRE_THROWS_WITH(ops::router_topk_backward(logits, out.scores, out.ids, out.weights, out.weights, Tensor(),
                                                Tensor::zeros({3, 6}, DType::f64), options(2), dlogits),
                      Contains("router dscore_row has shape [3,6], expected [6]"));
}

TEST_CASE("expert choice takes each expert's top tokens", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    // Column 2 ties at 0.7 for tokens 0, 1, 2: the two lower tokens win. Token 0 is taken by
    // every expert, token 3 by none.
    std::vector<double> sv = {0.9, 0.8, 0.7,  //
                              0.5, 0.1, 0.7,  //
                              0.6, 0.3, 0.7,  //
                              0.1, 0.2, 0.1};
    Tensor scores = values_tensor(sv, {4, 3}, dt);
    Tensor ids = Tensor::empty({4, 3}, DType::i32), weights = poisoned({4, 3}, dt);
    ops::expert_choice_forward(scores, 2, ids, weights);
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2, -1, -1, 2, 0, 1, -1, -1, -1, -1});
    check(weights, {0.9, 0.8, 0.7, 0, 0, 0.7, 0.6, 0.3, 0, 0, 0, 0}, "expert choice weights");

    ops::expert_choice_forward(scores, 0, ids, weights);
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>(12, -1));
    check(weights, std::vector<double>(12, 0.0), "capacity 0 weights");
    ops::expert_choice_forward(scores, 9, ids, weights);  // more than the tokens: every token
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2});
    check(weights, sv, "capacity above T weights");
  }
}

TEST_CASE("capacity drops by position (GShard order) and by probability", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    // 5 tokens, k = 2, 3 experts, capacity 2; token 4's first slot was dropped already.
    const std::vector<int32_t> iv = {1, 0, 0, 2, 0, 1, 2, 0, -1, 2};
    const std::vector<double> wv = {0.5, 0.7, 0.4, 0.3, 0.4, 0.6, 0.2, 0.4, 0.0, 0.9};
    // By position, slot-major: expert 0 keeps the first choices (t1,s0) (t2,s0) over the earlier
    // token's second choice (t0,s1) and drops (t3,s1); expert 1 keeps both; expert 2 keeps
    // (t3,s0) (t1,s1) and drops (t4,s1).
    Tensor ids = ids_tensor(iv, {5, 2});
    Tensor weights = values_tensor(wv, {5, 2}, dt);
    CHECK(ops::apply_capacity(ids, weights, 3, 2, ops::DropOrder::by_position) == 3);
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>{1, -1, 0, 2, 0, 1, 2, -1, -1, -1});
    check(weights, {0.5, 0, 0.4, 0.3, 0.4, 0.6, 0.2, 0, 0, 0}, "by position weights");

    // By probability: expert 0 keeps 0.7 (t0,s1), then of the three 0.4 the lowest token (t1,s0);
    // expert 2 keeps 0.9 and 0.3 and drops 0.2.
    ids = ids_tensor(iv, {5, 2});
    weights = values_tensor(wv, {5, 2}, dt);
    CHECK(ops::apply_capacity(ids, weights, 3, 2, ops::DropOrder::by_probability) == 3);
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>{1, 0, 0, 2, -1, 1, -1, -1, -1, 2});
    check(weights, {0.5, 0.7, 0.4, 0.3, 0, 0.6, 0, 0, 0, 0.9}, "by probability weights");

    // A weight tie inside one token goes to the lower slot; capacity 0 drops everything.
    ids = ids_tensor({1, 1, 1, 0}, {2, 2});
    weights = values_tensor({0.5, 0.5, 0.5, 0.1}, {2, 2}, dt);
    CHECK(ops::apply_capacity(ids, weights, 2, 1, ops::DropOrder::by_probability) == 2);
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>{1, -1, -1, 0});
    CHECK(ops::apply_capacity(ids, weights, 2, 0, ops::DropOrder::by_position) == 2);
    CHECK(ids.to_vector<int32_t>() == std::vector<int32_t>{-1, -1, -1, -1});
  }
}

TEST_CASE("noisy logits and the row gate follow their formulas", "[kernels][cpu][routing]") {
  for (DType dt : k_float_types) {
    // softplus(100) = 100 and softplus(-100) = e^-100 to rounding: the stable forms.
    std::vector<double> clean = {0.5, -1.0, 2.0, 0.0}, raw = {0.0, 100.0, -100.0, 1.5}, normal = {1.0, -0.5, 2.0, 0.3};
    Tensor h = poisoned({2, 2}, dt);
    ops::noisy_logits_forward(values_tensor(clean, {2, 2}, dt), values_tensor(raw, {2, 2}, dt),
                              values_tensor(normal, {2, 2}, dt), h);
    check(h, {0.5 + std::log(2.0), -1.0 - 50.0, 2.0 + 2.0 * std::exp(-100.0), 0.3 * std::log1p(std::exp(1.5))},
          "noisy h");
    Tensor dclean = poisoned({2, 2}, dt), draw = poisoned({2, 2}, dt);
    std::vector<double> dh = {1.0, 2.0, -1.0, 0.5};
    ops::noisy_logits_backward(values_tensor(raw, {2, 2}, dt), values_tensor(normal, {2, 2}, dt),
                               values_tensor(dh, {2, 2}, dt), dclean, draw);
    check(dclean, dh, "noisy dclean");
    check(draw, {0.5, -1.0, -2.0 * sigmoid(-100.0), 0.5 * 0.3 * sigmoid(1.5)}, "noisy draw_noise");

    const int64_t tokens = 7, dim = 5;
    Tensor x = random_tensor({tokens, dim}, dt, 80), gate = random_tensor({tokens, 1}, dt, 81, Device::cpu(), -3, 3);
    Tensor y = poisoned({tokens, dim}, dt);
    ops::row_gate_forward(x, gate, y);
    auto xv = values_of(x), gv = values_of(gate);
    std::vector<double> ref(xv.size());
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c = 0; c < dim; ++c) ref[t * dim + c] = sigmoid(gv[t]) * xv[t * dim + c];
    }
    check(y, ref, "row gate y");
  }
}

TEST_CASE("bad inputs to the routing ops name the problem", "[kernels][cpu][errors]") {
  const DType dt = DType::f64;
  Tensor logits = random_tensor({3, 6}, dt, 90);
  Tensor scores = Tensor::empty({3, 6}, dt);
  auto run = [&](const ops::TopKOptions& o, const Tensor& bias = Tensor()) {
    Tensor ids = Tensor::empty({3, o.k}, DType::i32), weights = Tensor::empty({3, o.k}, dt);
    ops::router_topk_forward(logits, bias, o, scores, ids, weights);
  };
  ops::TopKOptions o = options(2);
  o.num_groups = 3;
  o.top_groups = 4;
  REQUIRE_THROWS_WITH(run(o), Contains("router: top_groups 4 must be between 1 and num_groups 3"));
  o.top_groups = 0;
  REQUIRE_THROWS_WITH(run(o), Contains("router: top_groups 0 must be between 1 and num_groups 3"));
  o.num_groups = 4;
  o.top_groups = 1;
  REQUIRE_THROWS_WITH(run(o), Contains("router: 6 experts do not split into 4 equal groups"));
  o = options(3);
  o.num_groups = 3;
  o.top_groups = 1;
  REQUIRE_THROWS_WITH(run(o), Contains("router: top-k 3 exceeds the 2 experts of the 1 allowed groups"));
  o = options(1);
  o.top_groups = 2;
  REQUIRE_THROWS_WITH(run(o), Contains("router: top_groups 2 needs num_groups > 0"));
  o = options(2, ops::ScoreFunction::sigmoid);
  o.softmax_after_topk = true;
  REQUIRE_THROWS_WITH(run(o), Contains("softmax_after_topk needs softmax scores"));
  REQUIRE_THROWS_WITH(run(options(2), Tensor::zeros({5}, dt)), Contains("router bias has shape [5], expected [6]"));

  Tensor ids = Tensor::empty({3, 2}, DType::i32), weights = Tensor::empty({3, 2}, dt);
  Tensor dlogits = Tensor::empty({3, 6}, dt);
  REQUIRE_THROWS_WITH(ops::router_topk_backward(logits, scores, ids, weights, weights, Tensor::zeros({3, 5}, dt),
                                                options(2), dlogits),
                      Contains("router dscores has shape [3,5], expected [3,6]"));

  Tensor ec_ids = Tensor::empty({3, 6}, DType::i32), ec_w = Tensor::empty({3, 6}, dt);
  REQUIRE_THROWS_WITH(ops::expert_choice_forward(logits, -1, ec_ids, ec_w),
                      Contains("expert choice capacity must be non-negative, got -1"));

  Tensor cap_ids = ids_tensor({0, 1, 3, 2}, {2, 2});
  Tensor cap_w = values_tensor({0.5, 0.5, 0.5, 0.5}, {2, 2}, dt);
  REQUIRE_THROWS_WITH(ops::apply_capacity(cap_ids, cap_w, 3, -1, ops::DropOrder::by_position),
                      Contains("capacity must be non-negative, got -1"));
  REQUIRE_THROWS_WITH(ops::apply_capacity(cap_ids, cap_w, 3, 1, ops::DropOrder::by_probability),
                      Contains("apply_capacity: expert id 3 of token 1 (slot 0) is outside [0,3)"));

  Tensor x = random_tensor({3, 4}, dt, 91), y = Tensor::empty({3, 4}, dt);
  REQUIRE_THROWS_WITH(ops::row_gate_forward(x, Tensor::zeros({3}, dt), y),
                      Contains("row gate gate has shape [3], expected [3,1]"));
  Tensor h = Tensor::empty({3, 6}, dt);
  REQUIRE_THROWS_WITH(ops::noisy_logits_forward(logits, Tensor::zeros({3, 6}, DType::f32), logits, h),
                      Contains("noisy raw_noise has dtype f32, expected f64"));
}

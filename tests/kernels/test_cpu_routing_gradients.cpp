// Routing backwards in f64 against central finite differences: the top-k router over every
// option combination that has a gradient, expert choice, the noisy and row gates, and the
// combine with dropped slots. Each objective re-checks that no perturbation moved a selection.
#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr DType k_f64 = DType::f64;

enum class Weighting { plain, renormalize, softmax_after_topk };

const char* weighting_name(Weighting w) {
  switch (w) {
    case Weighting::plain: return "plain";
    case Weighting::renormalize: return "renormalize";
    case Weighting::softmax_after_topk: return "softmax_after_topk";
  }
  return "?";
}

}  // namespace

TEST_CASE("router backward through weights, scores and every option", "[kernels][cpu][grad]") {
  const int64_t tokens = 7, experts = 6;
  int combination = 0;
  for (auto score : {ops::ScoreFunction::softmax, ops::ScoreFunction::sigmoid}) {
    for (auto weighting : {Weighting::plain, Weighting::renormalize, Weighting::softmax_after_topk}) {
      // Sigmoid weights are always renormalised; Mixtral order exists for softmax only.
      if (score == ops::ScoreFunction::sigmoid && weighting != Weighting::plain) continue;
      for (int64_t k : {1, 3, 6}) {
        for (bool grouped : {false, true}) {
          if (grouped && k > 4) continue;  // 3 groups of 2, top 2: 4 experts allowed
          for (bool biased : {false, true}) {
            for (bool with_dscores : {false, true}) {
              ++combination;
              ops::TopKOptions o;
              o.k = k;
              o.score = score;
              o.renormalize = weighting == Weighting::renormalize;
              o.softmax_after_topk = weighting == Weighting::softmax_after_topk;
              o.num_groups = grouped ? 3 : 0;
              o.top_groups = grouped ? 2 : 0;
              const uint64_t seed = 100 + 10 * static_cast<uint64_t>(combination);
              Tensor logits = random_tensor({tokens, experts}, k_f64, seed, Device::cpu(), -2.0, 2.0);
              Tensor bias = biased ? random_tensor({experts}, k_f64, seed + 1, Device::cpu(), -0.2, 0.2) : Tensor();
              auto r_w = random_values(tokens * k, seed + 2);
              auto r_s = random_values(tokens * experts, seed + 3);
              Tensor scores = Tensor::empty({tokens, experts}, k_f64), weights = Tensor::empty({tokens, k}, k_f64);
              Tensor ids = Tensor::empty({tokens, k}, DType::i32);
              ops::router_topk_forward(logits, bias, o, scores, ids, weights);
              const auto chosen = ids.to_vector<int32_t>();
              auto f = [&] {
                ops::router_topk_forward(logits, bias, o, scores, ids, weights);
                REQUIRE(ids.to_vector<int32_t>() == chosen);  // finite differences need a fixed selection
                return functional(weights, r_w) + (with_dscores ? functional(scores, r_s) : 0.0);
              };
              ops::router_topk_forward(logits, bias, o, scores, ids, weights);
              Tensor dlogits = poisoned({tokens, experts}, k_f64);
              Tensor dscores = with_dscores ? values_tensor(r_s, {tokens, experts}, k_f64) : Tensor();
              ops::router_topk_backward(logits, scores, ids, weights, values_tensor(r_w, {tokens, k}, k_f64), dscores,
                                        o, dlogits);
              std::string what = std::string("router dlogits ") +
                                 (score == ops::ScoreFunction::sigmoid ? "sigmoid " : "softmax ") +
                                 weighting_name(weighting) + " k=" + std::to_string(k) +
                                 (grouped ? " grouped" : "") + (biased ? " biased" : "") +
                                 (with_dscores ? " dscores" : "");
              check_gradient(logits, f, values_of(dlogits), what);
            }
          }
        }
      }
    }
  }
  CHECK(combination == 80);
}

TEST_CASE("expert choice backward adds dweights where taken", "[kernels][cpu][grad]") {
  const int64_t tokens = 7, experts = 5, capacity = 3;
  Tensor scores = random_tensor({tokens, experts}, k_f64, 200, Device::cpu(), 0.0, 1.0);
  Tensor ids = Tensor::empty({tokens, experts}, DType::i32), weights = Tensor::empty({tokens, experts}, k_f64);
  ops::expert_choice_forward(scores, capacity, ids, weights);
  const auto chosen = ids.to_vector<int32_t>();
  auto r = random_values(tokens * experts, 201);
  auto f = [&] {
    ops::expert_choice_forward(scores, capacity, ids, weights);
    REQUIRE(ids.to_vector<int32_t>() == chosen);
    return functional(weights, r);
  };
  Tensor dscores = random_tensor({tokens, experts}, k_f64, 202);  // accumulated into
  const auto before = values_of(dscores);
  ops::expert_choice_backward(ids, values_tensor(r, {tokens, experts}, k_f64), dscores);
  check_gradient(scores, f, minus(values_of(dscores), before), "expert choice dscores");
}

TEST_CASE("noisy logits backward to the clean and noise logits", "[kernels][cpu][grad]") {
  const int64_t tokens = 7, experts = 6;
  Tensor clean = random_tensor({tokens, experts}, k_f64, 210);
  Tensor raw = random_tensor({tokens, experts}, k_f64, 211, Device::cpu(), -8.0, 8.0);
  Tensor normal = random_tensor({tokens, experts}, k_f64, 212, Device::cpu(), -2.0, 2.0);
  auto r = random_values(tokens * experts, 213);
  Tensor h = Tensor::empty({tokens, experts}, k_f64);
  auto f = [&] {
    ops::noisy_logits_forward(clean, raw, normal, h);
    return functional(h, r);
  };
  Tensor dclean = poisoned({tokens, experts}, k_f64), draw = poisoned({tokens, experts}, k_f64);
  ops::noisy_logits_backward(raw, normal, values_tensor(r, {tokens, experts}, k_f64), dclean, draw);
  check_gradient(clean, f, values_of(dclean), "noisy dclean");
  check_gradient(raw, f, values_of(draw), "noisy draw_noise");
}

TEST_CASE("row gate backward to the rows and the gate logit", "[kernels][cpu][grad]") {
  const int64_t tokens = 7, dim = 5;
  Tensor x = random_tensor({tokens, dim}, k_f64, 220);
  Tensor gate = random_tensor({tokens, 1}, k_f64, 221, Device::cpu(), -3.0, 3.0);
  auto r = random_values(tokens * dim, 222);
  Tensor y = Tensor::empty({tokens, dim}, k_f64);
  auto f = [&] {
    ops::row_gate_forward(x, gate, y);
    return functional(y, r);
  };
  Tensor dx = poisoned({tokens, dim}, k_f64), dgate = poisoned({tokens, 1}, k_f64);
  ops::row_gate_backward(x, gate, values_tensor(r, {tokens, dim}, k_f64), dx, dgate);
  check_gradient(x, f, values_of(dx), "row gate dx");
  check_gradient(gate, f, values_of(dgate), "row gate dgate");
}

TEST_CASE("combine backward with dropped slots and fewer rows than slots", "[kernels][cpu][grad]") {
  const int64_t tokens = 7, k = 2, experts = 3, dim = 5, capacity = 3;
  Tensor ids = random_ids(tokens * k, experts, 230).view({tokens, k});
  Tensor weights = random_tensor({tokens, k}, k_f64, 231, Device::cpu(), 0.0, 1.0);
  const int64_t dropped = ops::apply_capacity(ids, weights, experts, capacity, ops::DropOrder::by_position);
  REQUIRE(dropped > 0);
  Tensor sorted_tokens = Tensor::empty({tokens * k}, DType::i32), slot_pos = Tensor::empty({tokens * k}, DType::i32);
  ops::moe_sort_by_expert(ids, experts, sorted_tokens, slot_pos);
  const int64_t rows = tokens * k - dropped;
  Tensor y_sorted = random_tensor({rows, dim}, k_f64, 232);
  auto r = random_values(tokens * dim, 233);
  Tensor out = Tensor::empty({tokens, dim}, k_f64);
  auto f = [&] {
    ops::moe_combine_forward(y_sorted, slot_pos, weights, out);
    return functional(out, r);
  };
  Tensor dy_sorted = poisoned(y_sorted.shape(), k_f64), dweights = poisoned(weights.shape(), k_f64);
  ops::moe_combine_backward(y_sorted, slot_pos, weights, values_tensor(r, {tokens, dim}, k_f64), dy_sorted, dweights);
  check_gradient(y_sorted, f, values_of(dy_sorted), "combine dy_sorted with drops");
  check_gradient(weights, f, values_of(dweights), "combine dweights with drops");
}

// CUDA routing ops vs the CPU reference: the top-k router over its options (sigmoid, bias,
// groups, renormalisation, Mixtral order; ids exact on inputs without near-ties) and its
// backward, expert choice, both capacity orders (exact), and the noisy and row gates.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

// Selection keys (scores + bias) of one row, in double from the f32 logits.
std::vector<double> row_keys(const float* logits, int64_t experts, bool sigmoid, const std::vector<float>& bias) {
  std::vector<double> key(static_cast<size_t>(experts));
  double mx = *std::max_element(logits, logits + experts), total = 0;
  for (int64_t e = 0; e < experts; ++e) total += std::exp(logits[e] - mx);
  for (int64_t e = 0; e < experts; ++e) {
    const double s = sigmoid ? 1.0 / (1.0 + std::exp(-static_cast<double>(logits[e]))) : std::exp(logits[e] - mx) / total;
    key[static_cast<size_t>(e)] = s + (bias.empty() ? 0.0 : bias[static_cast<size_t>(e)]);
  }
  return key;
}

// Logits in [-3, 3] whose rows have pairwise separated keys (so group maxima are separated
// too): a row is redrawn until neighbouring sorted keys differ by far more than fp32 rounding.
Mirror separated_logits(int64_t tokens, int64_t experts, bool sigmoid, const std::vector<float>& bias, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(-3.0, 3.0);
  std::vector<float> values(static_cast<size_t>(tokens * experts));
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = values.data() + t * experts;
    for (int attempt = 0;; ++attempt) {
      REQUIRE(attempt < 1000);
      for (int64_t e = 0; e < experts; ++e) row[e] = static_cast<float>(dist(rng));
      auto key = row_keys(row, experts, sigmoid, bias);
      std::sort(key.begin(), key.end());
      bool separated = true;
      for (size_t i = 1; i < key.size(); ++i) {
        const double scale = std::max(std::abs(key[i]), std::abs(key[i - 1]));
        separated = separated && key[i] - key[i - 1] > 3e-5 * scale + (bias.empty() ? 0.0 : 1e-6);
      }
      if (separated) break;
    }
  }
  return mirror_values(values, {tokens, experts}, DType::f32);
}

struct Case {
  const char* name;
  int64_t k;
  ops::ScoreFunction score;
  bool renormalize, softmax_after_topk, biased, grouped, with_dscores;
};

const Case k_cases[] = {
    {"softmax", 2, ops::ScoreFunction::softmax, false, false, false, false, true},
    {"softmax renormalized", 6, ops::ScoreFunction::softmax, true, false, false, false, false},
    {"softmax all experts", 0, ops::ScoreFunction::softmax, true, false, false, false, true},  // k = E
    {"mixtral order", 2, ops::ScoreFunction::softmax, false, true, false, false, true},
    {"softmax biased grouped", 4, ops::ScoreFunction::softmax, true, false, true, true, true},
    {"sigmoid biased", 8, ops::ScoreFunction::sigmoid, false, false, true, false, true},
    {"sigmoid biased grouped", 8, ops::ScoreFunction::sigmoid, true, false, true, true, false},
    {"sigmoid k=1 grouped", 1, ops::ScoreFunction::sigmoid, false, false, false, true, true},
};

TEST_CASE("cuda router top-k matches the CPU over its options, ids exactly", "[cuda][router]") {
  for (const Case& c : k_cases) {
    for (int64_t experts : {8, 64, 160}) {
      ops::TopKOptions o;
      o.k = c.k == 0 ? experts : std::min<int64_t>(c.k, experts);
      o.score = c.score;
      o.renormalize = c.renormalize;
      o.softmax_after_topk = c.softmax_after_topk;
      if (c.grouped) {  // 4 groups of 2 or 8 groups of 8 / 20; half the groups allowed
        o.num_groups = experts == 8 ? 4 : 8;
        o.top_groups = o.num_groups / 2;
        o.k = std::min(o.k, o.top_groups * (experts / o.num_groups));
      }
      for (int64_t tokens : {1, 7, 19, 989}) {
        INFO(c.name << ": experts " << experts << " k " << o.k << " tokens " << tokens);
        const uint64_t seed = seed_of(41, {experts, o.k, tokens, static_cast<int64_t>(&c - k_cases)});
        std::vector<float> bias_v;
        if (c.biased) {
          auto b = random_values(experts, seed + 1, -0.2, 0.2);
          bias_v.assign(b.begin(), b.end());
        }
        Mirror bias = c.biased ? mirror_values(bias_v, {experts}, DType::f32) : Mirror{};
        Mirror logits = separated_logits(tokens, experts, c.score == ops::ScoreFunction::sigmoid, bias_v, seed);
        Mirror scores = poisoned_pair({tokens, experts}, DType::f32);
        Mirror ids = poisoned_pair({tokens, o.k}, DType::i32), weights = poisoned_pair({tokens, o.k}, DType::f32);
        ops::router_topk_forward(logits.cpu, bias.cpu, o, scores.cpu, ids.cpu, weights.cpu);
        ops::router_topk_forward(logits.gpu, bias.gpu, o, scores.gpu, ids.gpu, weights.gpu);
        require_match(scores, {1e-6, 1e-4}, "router scores");
        require_equal(ids.gpu, ids.cpu, "router ids");
        require_match(weights, {1e-6, 1e-4}, "router weights");

        // Backward from identical inputs: the CPU forward's outputs on both devices.
        Mirror dweights = random_mirror({tokens, o.k}, DType::f32, seed + 2);
        Mirror dscores = c.with_dscores ? random_mirror({tokens, experts}, DType::f32, seed + 3) : Mirror{};
        // A per-expert score gradient (Switch, device-level) on the 8- and 160-expert shapes.
        Mirror row = experts != 64 ? random_mirror({experts}, DType::f32, seed + 4) : Mirror{};
        Mirror saved_scores = mirror_of(scores.cpu, DType::f32), saved_weights = mirror_of(weights.cpu, DType::f32);
        Mirror dlogits = poisoned_pair({tokens, experts}, DType::f32);
        ops::router_topk_backward(logits.cpu, saved_scores.cpu, ids.cpu, saved_weights.cpu, dweights.cpu, dscores.cpu,
                                  row.cpu, o, dlogits.cpu);
        ops::router_topk_backward(logits.gpu, saved_scores.gpu, ids.cpu.to(gpu()), saved_weights.gpu, dweights.gpu,
                                  dscores.gpu, row.gpu, o, dlogits.gpu);
        require_match(dlogits, {1e-6, 1e-3}, "router dlogits");
      }
    }
  }
}

// The Switch statistics of the router's pass: the same scores, ids and weights as without them;
// counts exactly those of the ids; sums within rounding of a double column sum of the scores;
// bit for bit the same on a second run. Shapes: one token, fewer tokens than a block's warps,
// more tokens than the grid's warps (each warp then walks several), E not a multiple of 32,
// E = 256 (the most the pass makes them for) and E = 320, 3000 (a column sum and a count after it).
TEST_CASE("cuda router statistics: sums and counts of the pass, the same run to run", "[cuda][router]") {
  for (const Case& c : k_cases) {
    for (int64_t experts : {8, 64, 160, 256, 320, 3000}) {
      ops::TopKOptions o;
      o.k = c.k == 0 ? experts : std::min<int64_t>(c.k, experts);
      o.score = c.score;
      o.renormalize = c.renormalize;
      o.softmax_after_topk = c.softmax_after_topk;
      if (c.grouped) {
        o.num_groups = experts == 8 ? 4 : 8;
        o.top_groups = o.num_groups / 2;
        o.k = std::min(o.k, o.top_groups * (experts / o.num_groups));
      }
      const std::vector<int64_t> token_counts =
          experts <= 320 ? std::vector<int64_t>{0, 1, 37, 20000} : std::vector<int64_t>{0, 5, 300};
      for (int64_t tokens : token_counts) {
        INFO(c.name << ": experts " << experts << " k " << o.k << " tokens " << tokens);
        const uint64_t seed = seed_of(43, {experts, o.k, tokens, static_cast<int64_t>(&c - k_cases)});
        const Tensor logits = random_mirror({tokens, experts}, DType::f32, seed, -3.0, 3.0).gpu;
        const Tensor bias = c.biased ? random_mirror({experts}, DType::f32, seed + 1, -0.2, 0.2).gpu : Tensor();
        auto out = [&] { return poisoned_on({tokens, o.k}, DType::f32, gpu()); };
        Tensor scores = poisoned_on({tokens, experts}, DType::f32, gpu()), weights = out();
        Tensor ids = poisoned_on({tokens, o.k}, DType::i32, gpu());
        ops::router_topk_forward(logits, bias, o, scores, ids, weights);
        std::vector<float> first_sums;
        std::vector<int64_t> first_counts;
        for (int run = 0; run < 2; ++run) {
          Tensor s_scores = poisoned_on({tokens, experts}, DType::f32, gpu()), s_weights = out();
          Tensor s_ids = poisoned_on({tokens, o.k}, DType::i32, gpu());
          Tensor sums = poisoned_on({experts}, DType::f32, gpu());
          Tensor counts = Tensor::from_vector(std::vector<int64_t>(experts, -7), {experts}, DType::i64, gpu());
          ops::router_topk_forward(logits, bias, o, s_scores, s_ids, s_weights, sums, counts);
          REQUIRE(s_scores.to_vector<float>() == scores.to_vector<float>());
          require_equal(s_ids, ids, "ids with the statistics");
          REQUIRE(s_weights.to_vector<float>() == weights.to_vector<float>());
          if (run == 1) {
            REQUIRE(sums.to_vector<float>() == first_sums);
            REQUIRE(counts.to_vector<int64_t>() == first_counts);
            continue;
          }
          first_sums = sums.to_vector<float>();
          first_counts = counts.to_vector<int64_t>();
          std::vector<int64_t> ref_counts(static_cast<size_t>(experts), 0);
          for (int32_t id : ids.to_vector<int32_t>()) {
            REQUIRE((id >= 0 && id < experts));
            ++ref_counts[static_cast<size_t>(id)];
          }
          REQUIRE(first_counts == ref_counts);
          const std::vector<double> score_values = scores.to_vector<double>();
          std::vector<double> ref_sums(static_cast<size_t>(experts), 0.0);
          for (int64_t t = 0; t < tokens; ++t)
            for (int64_t e = 0; e < experts; ++e) ref_sums[static_cast<size_t>(e)] += score_values[t * experts + e];
          require_close(sums.to_vector<double>(), ref_sums, 1e-5 * max_abs(ref_sums) + 1e-30, 1e-5, "score sums");
        }
      }
    }
  }
}

TEST_CASE("cuda router ties: equal keys go to the lower expert and the lower group", "[cuda][router]") {
  // Integer logits in [0, 3]: many exactly equal scores (and group maxima), none nearly equal.
  const int64_t tokens = 300, experts = 16;
  std::vector<int32_t> levels = random_int_values(tokens * experts, 4, 42);
  Mirror logits = mirror_values(std::vector<float>(levels.begin(), levels.end()), {tokens, experts}, DType::f32);
  for (auto score : {ops::ScoreFunction::softmax, ops::ScoreFunction::sigmoid}) {
    for (bool grouped : {false, true}) {
      ops::TopKOptions o;
      o.k = 4;
      o.score = score;
      o.num_groups = grouped ? 4 : 0;
      o.top_groups = grouped ? 2 : 0;
      Mirror scores = poisoned_pair({tokens, experts}, DType::f32);
      Mirror ids = poisoned_pair({tokens, o.k}, DType::i32), weights = poisoned_pair({tokens, o.k}, DType::f32);
      ops::router_topk_forward(logits.cpu, Tensor(), o, scores.cpu, ids.cpu, weights.cpu);
      ops::router_topk_forward(logits.gpu, Tensor(), o, scores.gpu, ids.gpu, weights.gpu);
      require_equal(ids.gpu, ids.cpu, grouped ? "grouped ids with ties" : "ids with ties");
      if (grouped) continue;
      auto got = ids.gpu.to_vector<int32_t>();
      for (int64_t t = 0; t < tokens; ++t) {  // the expected order, independently of the CPU
        std::vector<int32_t> order(static_cast<size_t>(experts));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int32_t a, int32_t b) { return levels[t * experts + a] > levels[t * experts + b]; });
        for (int64_t s = 0; s < o.k; ++s) REQUIRE(got[static_cast<size_t>(t * o.k + s)] == order[static_cast<size_t>(s)]);
      }
    }
  }
}

TEST_CASE("cuda expert choice matches the CPU exactly, backward adds where taken", "[cuda][router]") {
  for (int64_t experts : {8, 64, 160}) {
    for (int64_t tokens : {1, 7, 19, 989}) {
      const int64_t fair = (2 * tokens + experts - 1) / experts;  // capacity factor 2
      for (int64_t capacity : {int64_t{0}, int64_t{1}, fair, tokens + 5}) {
        INFO("experts " << experts << " tokens " << tokens << " capacity " << capacity);
        const uint64_t seed = seed_of(43, {experts, tokens, capacity});
        Mirror scores = random_mirror({tokens, experts}, DType::f32, seed, 0.0, 1.0);
        Mirror ids = poisoned_pair({tokens, experts}, DType::i32), weights = poisoned_pair({tokens, experts}, DType::f32);
        ops::expert_choice_forward(scores.cpu, capacity, ids.cpu, weights.cpu);
        ops::expert_choice_forward(scores.gpu, capacity, ids.gpu, weights.gpu);
        require_equal(ids.gpu, ids.cpu, "expert choice ids");
        require_close(weights.gpu, weights.cpu, 0, 0, "expert choice weights");

        Mirror dweights = random_mirror({tokens, experts}, DType::f32, seed + 1);
        Mirror dscores = random_mirror({tokens, experts}, DType::f32, seed + 2);  // accumulated into
        ops::expert_choice_backward(ids.cpu, dweights.cpu, dscores.cpu);
        ops::expert_choice_backward(ids.gpu, dweights.gpu, dscores.gpu);
        require_match(dscores, {1e-6, 1e-6}, "expert choice dscores");
      }
    }
  }
}

TEST_CASE("cuda apply_capacity matches the CPU exactly in both orders", "[cuda][router]") {
  for (int64_t experts : {8, 64, 160}) {
    for (int64_t k : {1, 2, 6}) {
      for (int64_t tokens : {1, 7, 19, 989}) {
        const int64_t fair = (k * tokens + experts - 1) / experts;
        for (int64_t capacity : {int64_t{0}, int64_t{1}, fair, k * tokens}) {
          for (auto order : {ops::DropOrder::by_position, ops::DropOrder::by_probability}) {
            INFO("experts " << experts << " k " << k << " tokens " << tokens << " capacity " << capacity << " order "
                            << static_cast<int>(order));
            const uint64_t seed = seed_of(44, {experts, k, tokens, capacity, static_cast<int64_t>(order)});
            auto iv = random_int_values(tokens * k, experts + 1, seed);
            for (auto& id : iv) {
              if (id == experts) id = -1;  // some slots already dropped
            }
            Mirror ids = mirror_ids(iv, {tokens, k});
            Mirror weights = random_mirror({tokens, k}, DType::f32, seed + 1, 0.0, 1.0);
            const int64_t dropped_cpu = ops::apply_capacity(ids.cpu, weights.cpu, experts, capacity, order);
            const int64_t dropped_gpu = ops::apply_capacity(ids.gpu, weights.gpu, experts, capacity, order);
            REQUIRE(dropped_gpu == dropped_cpu);
            require_equal(ids.gpu, ids.cpu, "ids after capacity");
            require_close(weights.gpu, weights.cpu, 0, 0, "weights after capacity");
          }
        }
      }
    }
  }
}

TEST_CASE("cuda noisy logits forward and backward match the CPU", "[cuda][router]") {
  for (int64_t experts : {8, 64, 160}) {
    for (int64_t tokens : {1, 7, 19, 989}) {
      INFO("experts " << experts << " tokens " << tokens);
      const uint64_t seed = seed_of(45, {experts, tokens});
      const Shape shape{tokens, experts};
      Mirror clean = random_mirror(shape, DType::f32, seed);
      Mirror raw = random_mirror(shape, DType::f32, seed + 1, -20.0, 20.0);  // both softplus tails
      Mirror normal = random_mirror(shape, DType::f32, seed + 2, -3.0, 3.0);
      Mirror h = poisoned_pair(shape, DType::f32);
      ops::noisy_logits_forward(clean.cpu, raw.cpu, normal.cpu, h.cpu);
      ops::noisy_logits_forward(clean.gpu, raw.gpu, normal.gpu, h.gpu);
      require_match(h, {1e-5, 1e-5}, "noisy h");

      Mirror dh = random_mirror(shape, DType::f32, seed + 3);
      Mirror dclean = poisoned_pair(shape, DType::f32), draw = poisoned_pair(shape, DType::f32);
      ops::noisy_logits_backward(raw.cpu, normal.cpu, dh.cpu, dclean.cpu, draw.cpu);
      ops::noisy_logits_backward(raw.gpu, normal.gpu, dh.gpu, dclean.gpu, draw.gpu);
      require_match(dclean, {0, 0}, "noisy dclean");
      require_match(draw, {1e-6, 1e-5}, "noisy draw_noise");
    }
  }
}

TEST_CASE("cuda row gate forward and backward match the CPU", "[cuda][router]") {
  for (int64_t dim : {1, 37, 64, 256}) {
    for (int64_t tokens : {1, 7, 19, 989}) {
      INFO("dim " << dim << " tokens " << tokens);
      const uint64_t seed = seed_of(46, {dim, tokens});
      Mirror x = random_mirror({tokens, dim}, DType::bf16, seed);
      Mirror gate = random_mirror({tokens, 1}, DType::bf16, seed + 1, -4.0, 4.0);
      Mirror y = poisoned_pair({tokens, dim}, DType::bf16);
      ops::row_gate_forward(x.cpu, gate.cpu, y.cpu);
      ops::row_gate_forward(x.gpu, gate.gpu, y.gpu);
      require_match(y, bf16_tol(), "row gate y");

      Mirror dy = random_mirror({tokens, dim}, DType::bf16, seed + 2);
      Mirror dx = poisoned_pair({tokens, dim}, DType::bf16), dgate = poisoned_pair({tokens, 1}, DType::bf16);
      ops::row_gate_backward(x.cpu, gate.cpu, dy.cpu, dx.cpu, dgate.cpu);
      ops::row_gate_backward(x.gpu, gate.gpu, dy.gpu, dx.gpu, dgate.gpu);
      require_match(dx, bf16_tol(), "row gate dx");
      require_match(dgate, bf16_tol(), "row gate dgate");
    }
  }
}

TEST_CASE("cuda routing ops reject what the GPU does not support", "[cuda][router]") {
  Tensor logits = Tensor::from_vector(std::vector<double>(12, 0.5), {3, 4}, DType::f64, gpu());
  Tensor scores = Tensor::empty({3, 4}, DType::f64, gpu()), weights = Tensor::empty({3, 2}, DType::f64, gpu());
  Tensor ids = Tensor::empty({3, 2}, DType::i32, gpu());
  ops::TopKOptions o;
  o.k = 2;
  REQUIRE_THROWS_WITH(ops::router_topk_forward(logits, Tensor(), o, scores, ids, weights),
                      Catch::Contains("router logits on CUDA has dtype f64, expected f32"));
  Tensor cap_ids = Tensor::from_vector(std::vector<int32_t>{0, 1, 5, 2}, {2, 2}, DType::i32, gpu());
  Tensor cap_w = Tensor::from_vector(std::vector<float>(4, 0.5f), {2, 2}, DType::f32, gpu());
  REQUIRE_THROWS_WITH(ops::apply_capacity(cap_ids, cap_w, 4, 1, ops::DropOrder::by_position),
                      Catch::Contains("expert id 5 of token 1 (slot 0) is outside [0,4)"));
}

}  // namespace
}  // namespace moe::test

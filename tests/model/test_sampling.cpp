// Next-token sampling: greedy, the nucleus cut, top-k, and temperature. Frequencies over many
// seeded draws are compared with the renormalised softmax they must follow.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "src/model/sampling.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

constexpr int k_draws = 40000;

// Frequencies of each id over k_draws draws.
std::vector<double> frequencies(const std::vector<float>& logits, const SamplingOptions& options, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> freq(logits.size(), 0.0);
  for (int i = 0; i < k_draws; ++i) freq[static_cast<size_t>(sample_token(logits, options, rng))] += 1.0 / k_draws;
  return freq;
}

// softmax(logits / temperature) restricted to `keep` and renormalised.
std::vector<double> expected(const std::vector<float>& logits, double temperature, const std::vector<int>& keep) {
  std::vector<double> p(logits.size(), 0.0);
  double total = 0;
  for (int id : keep) total += p[id] = std::exp(logits[id] / temperature);
  for (double& v : p) v /= total;
  return p;
}

void require_close(const std::vector<double>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("id " << i << ": got " << got[i] << ", expected " << want[i]);
    CHECK(std::abs(got[i] - want[i]) < 0.015);  // ~6 standard deviations at 40000 draws
    if (want[i] == 0) CHECK(got[i] == 0);       // outside the cut: never drawn
  }
}

// log-probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
const std::vector<float> k_logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};

TEST_CASE("greedy sampling takes the largest logit, ties to the lower id", "[model][sampling]") {
  std::mt19937_64 rng(1);
  SamplingOptions greedy{0.0, 1.0, 0};
  CHECK(sample_token({0.1f, 2.0f, -1.0f, 1.9f}, greedy, rng) == 1);
  CHECK(sample_token({3.0f, 1.0f, 3.0f}, greedy, rng) == 0);
  CHECK(sample_token({-5.0f}, greedy, rng) == 0);
}

TEST_CASE("nucleus keeps the smallest most-likely set reaching top_p", "[model][sampling]") {
  const std::vector<double> probs = {0.15, 0.5, 0.05, 0.3};
  CHECK(nucleus(probs, 0.4) == std::vector<int32_t>{1});
  CHECK(nucleus(probs, 0.5) == std::vector<int32_t>{1});
  CHECK(nucleus(probs, 0.6) == std::vector<int32_t>{1, 3});
  CHECK(nucleus(probs, 0.8) == std::vector<int32_t>{1, 3});  // the mass reaches 0.8 exactly
  CHECK(nucleus(probs, 0.81) == std::vector<int32_t>{1, 3, 0});
  CHECK(nucleus(probs, 1.0) == std::vector<int32_t>{1, 3, 0, 2});
  CHECK(nucleus({0.25, 0.25, 0.25, 0.25}, 0.5) == std::vector<int32_t>{0, 1});  // ties keep id order
}

TEST_CASE("temperature 1 samples the softmax; the nucleus cut renormalises", "[model][sampling]") {
  require_close(frequencies(k_logits, {1.0, 1.0, 0}, 7), expected(k_logits, 1.0, {0, 1, 2, 3}));
  require_close(frequencies(k_logits, {1.0, 0.75, 0}, 8), expected(k_logits, 1.0, {0, 1}));
  require_close(frequencies(k_logits, {1.0, 0.9, 0}, 9), expected(k_logits, 1.0, {0, 1, 2}));
}

TEST_CASE("temperature sharpens below 1 and flattens above", "[model][sampling]") {
  require_close(frequencies(k_logits, {0.5, 1.0, 0}, 10), expected(k_logits, 0.5, {0, 1, 2, 3}));
  require_close(frequencies(k_logits, {2.0, 1.0, 0}, 11), expected(k_logits, 2.0, {0, 1, 2, 3}));
  const std::vector<double> hot = frequencies(k_logits, {1000.0, 1.0, 0}, 12);
  for (double f : hot) CHECK(std::abs(f - 0.25) < 0.015);  // almost uniform
}

TEST_CASE("top_k keeps the k likeliest tokens", "[model][sampling]") {
  std::mt19937_64 rng(13);
  for (int i = 0; i < 200; ++i) CHECK(sample_token(k_logits, {1.0, 1.0, 1}, rng) == 0);  // top-1 is greedy
  require_close(frequencies(k_logits, {1.0, 1.0, 2}, 14), expected(k_logits, 1.0, {0, 1}));
  require_close(frequencies(k_logits, {1.0, 1.0, 3}, 15), expected(k_logits, 1.0, {0, 1, 2}));
  require_close(frequencies(k_logits, {1.0, 1.0, 10}, 16), expected(k_logits, 1.0, {0, 1, 2, 3}));
  // With top_p too, the smaller of the two sets: the nucleus at 0.75 holds 2 tokens.
  require_close(frequencies(k_logits, {1.0, 0.75, 3}, 17), expected(k_logits, 1.0, {0, 1}));
  require_close(frequencies(k_logits, {1.0, 0.95, 2}, 18), expected(k_logits, 1.0, {0, 1}));
}

TEST_CASE("sampling is reproducible from its seed", "[model][sampling]") {
  std::mt19937_64 a(21), b(21);
  for (int i = 0; i < 100; ++i) CHECK(sample_token(k_logits, {1.0, 0.95, 0}, a) == sample_token(k_logits, {1.0, 0.95, 0}, b));
}

TEST_CASE("bad sampling options and empty logits are refused", "[model][sampling][errors]") {
  std::mt19937_64 rng(1);
  CHECK_THROWS_WITH(sample_token({}, {1.0, 1.0, 0}, rng), Contains("sampling from empty logits"));
  for (SamplingOptions bad : {SamplingOptions{-1.0, 1.0, 0}, SamplingOptions{1.0, 0.0, 0}, SamplingOptions{1.0, 1.5, 0},
                              SamplingOptions{1.0, 1.0, -1}}) {
    CHECK_THROWS_WITH(sample_token(k_logits, bad, rng), Contains("temperature must be >= 0, top_p in (0, 1] and top_k >= 0"));
  }
}

}  // namespace
}  // namespace moe

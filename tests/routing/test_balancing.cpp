// Balancing losses: each term against a hand-computed example, every gradient against central
// finite differences, the cross-checks between terms, the load metrics, the bias update, bad input.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "routing/balancing.h"
#include "tests/test_util.h"

using moe::BalanceInputs;
using moe::BalanceResult;
using moe::BalancingConfig;
using moe::compute_balancing;
using moe::test::require_close;

namespace {

const double k_ln2 = std::log(2.0);

// softplus(raw) = s  <=>  raw = log(e^s - 1).
double inverse_softplus(double s) { return std::log(std::exp(s) - 1.0); }

// Central differences of f with respect to every element of x (f64, x restored after).
std::vector<double> numeric_gradient(std::vector<double>& x, const std::function<double()>& f, double eps = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double saved = x[i];
    x[i] = saved + eps;
    double plus = f();
    x[i] = saved - eps;
    double minus = f();
    x[i] = saved;
    grad[i] = (plus - minus) / (2 * eps);
  }
  return grad;
}

// Random routing of T tokens over E experts, top-k of softmax (or sigmoid) scores; weights are
// the selected scores renormalised; counts come from ids; noisy-gating inputs are random.
BalanceInputs random_inputs(int64_t T, int64_t E, int64_t k, int64_t seq_len, uint64_t seed, bool sigmoid = false) {
  BalanceInputs in;
  in.tokens = T, in.experts = E, in.slots = k, in.seq_len = seq_len;
  in.logits = moe::test::random_values(T * E, seed, -2, 2);
  in.clean = moe::test::random_values(T * E, seed + 1, -2, 2);
  in.raw_noise = moe::test::random_values(T * E, seed + 2, -1, 1);
  in.normal = moe::test::random_values(T * E, seed + 3, -1.5, 1.5);
  in.scores.resize(static_cast<size_t>(T * E));
  in.counts.assign(static_cast<size_t>(E), 0);
  for (int64_t t = 0; t < T; ++t) {
    const double* z = &in.logits[static_cast<size_t>(t * E)];
    double* s = &in.scores[static_cast<size_t>(t * E)];
    double m = *std::max_element(z, z + E), sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += std::exp(z[j] - m);
    for (int64_t j = 0; j < E; ++j) s[j] = sigmoid ? 1 / (1 + std::exp(-z[j])) : std::exp(z[j] - m) / sum;
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[a] > s[b]; });
    double wsum = 0;
    for (int64_t q = 0; q < k; ++q) wsum += s[order[q]];
    for (int64_t q = 0; q < k; ++q) {
      in.ids.push_back(order[q]);
      in.weights.push_back(s[order[q]] / wsum);
      in.counts[static_cast<size_t>(order[q])] += 1;
    }
  }
  return in;
}

// Smallest gap between two h = clean + normal * softplus(raw) values of one token: the load
// gradient check needs the k-th-excluding element not to switch under a 1e-6 perturbation.
double min_h_gap(const BalanceInputs& in) {
  double gap = 1e30;
  for (int64_t t = 0; t < in.tokens; ++t) {
    std::vector<double> h;
    for (int64_t j = 0; j < in.experts; ++j) {
      size_t a = static_cast<size_t>(t * in.experts + j);
      h.push_back(in.clean[a] + in.normal[a] * std::log1p(std::exp(in.raw_noise[a])));
    }
    std::sort(h.begin(), h.end());
    for (size_t j = 1; j < h.size(); ++j) gap = std::min(gap, h[j] - h[j - 1]);
  }
  return gap;
}

// Checks every gradient compute_balancing returns against finite differences of `total`.
void check_gradients(BalanceInputs in, const BalancingConfig& config, const std::string& what) {
  BalanceResult r = compute_balancing(in, config);
  auto total = [&] { return compute_balancing(in, config).total; };
  const double atol = 1e-9, rtol = 1e-6;
  if (!r.dscores.empty()) require_close(r.dscores, numeric_gradient(in.scores, total), atol, rtol, what + " dscores");
  if (!r.dlogits.empty()) require_close(r.dlogits, numeric_gradient(in.logits, total), atol, rtol, what + " dlogits");
  if (!r.dweights.empty())
    require_close(r.dweights, numeric_gradient(in.weights, total), atol, rtol, what + " dweights");
  if (!r.dclean.empty()) require_close(r.dclean, numeric_gradient(in.clean, total), atol, rtol, what + " dclean");
  if (!r.draw_noise.empty())
    require_close(r.draw_noise, numeric_gradient(in.raw_noise, total), atol, rtol, what + " draw_noise");
}

// T = 2, E = 3, k = 2: token 0 picks {0, 1}, token 1 picks {1, 2}.
BalanceInputs small_example() {
  BalanceInputs in;
  in.tokens = 2, in.experts = 3, in.slots = 2, in.seq_len = 2;
  in.scores = {0.5, 0.3, 0.2, 0.1, 0.6, 0.3};
  in.ids = {0, 1, 1, 2};
  in.weights = {0.6, 0.4, 0.7, 0.3};
  in.counts = {1, 2, 1};
  return in;
}

}  // namespace

TEST_CASE("switch loss: hand-computed value and gradient", "[balancing]") {
  BalanceInputs in = small_example();
  BalancingConfig config;
  config.switch_coef = 0.01;
  // f_i = counts_i / (k T) = [1, 2, 1] / 4 = [0.25, 0.5, 0.25]  (all k choices counted, / k)
  // P_i = mean_t scores = [(0.5+0.1)/2, (0.3+0.6)/2, (0.2+0.3)/2] = [0.3, 0.45, 0.25]
  // sum f P = 0.075 + 0.225 + 0.0625 = 0.3625;  L = 0.01 * 3 * 0.3625 = 0.010875
  // (counting only the first choice would give f = [0.5, 0.5, 0] and 0.01*3*0.375 = 0.01125.)
  BalanceResult r = compute_balancing(in, config);
  REQUIRE(r.terms.size() == 1);
  CHECK(r.terms.at("switch") == Approx(0.010875).epsilon(1e-12));
  CHECK(r.total == Approx(0.010875).epsilon(1e-12));
  // dscores[t,i] = alpha E f_i / T = 0.03 * f_i / 2 = [0.00375, 0.0075, 0.00375] for each token.
  require_close(r.dscores, {0.00375, 0.0075, 0.00375, 0.00375, 0.0075, 0.00375}, 1e-15, 1e-12, "dscores");
  // Only scores have a gradient.
  CHECK(r.dlogits.empty());
  CHECK(r.dweights.empty());
  CHECK(r.dclean.empty());
  CHECK(r.draw_noise.empty());
  check_gradients(in, config, "switch");
}

TEST_CASE("switch loss equals alpha E sum f P with f counted over all k choices / k", "[balancing]") {
  BalanceInputs in = random_inputs(9, 6, 3, 3, 11);
  BalancingConfig config;
  config.switch_coef = 0.02;
  std::vector<double> f(6, 0.0), p(6, 0.0);
  for (int32_t id : in.ids) f[static_cast<size_t>(id)] += 1.0 / (3 * 9);
  for (int64_t t = 0; t < 9; ++t)
    for (int64_t i = 0; i < 6; ++i) p[static_cast<size_t>(i)] += in.scores[static_cast<size_t>(t * 6 + i)] / 9;
  double expected = 0;
  for (size_t i = 0; i < 6; ++i) expected += 0.02 * 6 * f[i] * p[i];
  CHECK(compute_balancing(in, config).terms.at("switch") == Approx(expected).epsilon(1e-12));
  // A balanced routing with uniform scores gives exactly alpha (f_i = P_i = 1/E).
  BalanceInputs uniform;
  uniform.tokens = 4, uniform.experts = 4, uniform.slots = 2;
  uniform.scores.assign(16, 0.25);
  uniform.counts = {2, 2, 2, 2};
  CHECK(compute_balancing(uniform, config).total == Approx(0.02).epsilon(1e-12));
}

TEST_CASE("importance loss: hand-computed value and gradient, dropped slots ignored", "[balancing]") {
  BalanceInputs in = small_example();
  // A third token whose both slots were dropped (id -1): its weights must not count.
  in.tokens = 3;
  in.ids = {0, 1, 1, 2, -1, -1};
  in.weights = {0.6, 0.4, 0.7, 0.3, 0.5, 0.5};
  in.scores.clear();
  in.counts.clear();
  BalancingConfig config;
  config.importance_coef = 0.1;
  // Importance = [0.6, 0.4 + 0.7, 0.3] = [18, 33, 9] / 30, mean = 2/3 = 20/30
  // deviations [-2, 13, -11] / 30, squares [4, 169, 121] / 900, var = 294 / 2700 = 98 / 900
  // CV^2 = var / mean^2 = (98/900) / (400/900) = 0.245;  L = 0.1 * 0.245 = 0.0245
  BalanceResult r = compute_balancing(in, config);
  CHECK(r.terms.at("importance") == Approx(0.0245).epsilon(1e-12));
  // dCV^2/dI_i = (2/E)(I_i - m)/m^2 - (2/E) var/m^3 = 1.5 (I_i - m) - 0.245
  //   (2/3)/(4/9) = 1.5;  var/m^3 = (98/900)/(8/27) = 0.3675;  (2/3) 0.3675 = 0.245
  // i=0: 1.5*(-1/15) - 0.245 = -0.345; i=1: 1.5*(13/30) - 0.245 = 0.405; i=2: -0.55 - 0.245 = -0.795
  // times w = 0.1, gathered by ids; the dropped slots get 0.
  require_close(r.dweights, {-0.0345, 0.0405, 0.0405, -0.0795, 0, 0}, 1e-15, 1e-12, "dweights");
  CHECK(r.dscores.empty());
  check_gradients(in, config, "importance");
}

TEST_CASE("load loss: hand-computed smooth estimator with the threshold from other experts", "[balancing]") {
  // T = 2, E = 3, k = 2: kth_excluding(h, 2, i) = the smaller of the two other h values.
  BalanceInputs in;
  in.tokens = 2, in.experts = 3, in.slots = 2;
  // Token 0: softplus(raw) = 1 everywhere; clean [2, 0, -1], normal [-1, 2, 0] -> h = [1, 2, -1]
  //   i=0: thr = min(2, -1) = -1, z = (2 + 1)/1 = 3;  i=1: thr = min(1, -1) = -1, z = (0 + 1) = 1
  //   i=2: thr = min(1, 2) = 1, z = (-1 - 1) = -2
  // Token 1: softplus(raw) = 2 everywhere; clean [0, 1, 1], normal [2, 0, -1] -> h = [4, 1, -1]
  //   i=0: thr = min(1, -1) = -1, z = (0 + 1)/2 = 0.5;  i=1: thr = min(4, -1) = -1, z = (1 + 1)/2 = 1
  //   i=2: thr = min(4, 1) = 1, z = (1 - 1)/2 = 0
  double r1 = inverse_softplus(1.0), r2 = inverse_softplus(2.0);
  in.clean = {2, 0, -1, 0, 1, 1};
  in.normal = {-1, 2, 0, 2, 0, -1};
  in.raw_noise = {r1, r1, r1, r2, r2, r2};
  BalancingConfig config;
  config.load_coef = 0.5;
  // Normal table: Phi(3) = 0.9986501019683699, Phi(0.5) = 0.6914624612740131,
  // Phi(1) = 0.8413447460685429, Phi(-2) = 0.02275013194817921, Phi(0) = 0.5.
  // Load = [Phi(3) + Phi(0.5), Phi(1) + Phi(1), Phi(-2) + Phi(0)]
  //      = [1.690112563242383, 1.6826894921370859, 0.5227501319481792]
  // mean = 1.2985173957758829, var = 0.30091660747746657, CV^2 = 0.17846399587324202
  // L = 0.5 * 0.17846399587324202 = 0.08923199793662101
  std::vector<double> load = {0.9986501019683699 + 0.6914624612740131, 2 * 0.8413447460685429,
                              0.02275013194817921 + 0.5};
  double mean = (load[0] + load[1] + load[2]) / 3;
  double var = ((load[0] - mean) * (load[0] - mean) + (load[1] - mean) * (load[1] - mean) +
                (load[2] - mean) * (load[2] - mean)) / 3;
  CHECK(var / (mean * mean) == Approx(0.17846399587324202).epsilon(1e-12));
  BalanceResult r = compute_balancing(in, config);
  CHECK(r.terms.at("load") == Approx(0.5 * var / (mean * mean)).epsilon(1e-12));
  CHECK(r.dclean.size() == 6);
  CHECK(r.draw_noise.size() == 6);
  REQUIRE(min_h_gap(in) > 0.5);
  check_gradients(in, config, "load hand");
  // On token 0, h_2 = -1 is the threshold of experts 0 and 1, so dclean[0,2] and draw_noise[0,2]
  // carry their terms as well as P(0,2)'s own: the finite differences above check that path.
}

TEST_CASE("load loss: gradients on random noisy gating with k = 1, 2, 3", "[balancing]") {
  for (int64_t k : {1, 2, 3}) {
    BalanceInputs in = random_inputs(6, 5, k, 3, 40 + static_cast<uint64_t>(k));
    INFO("k = " << k);
    REQUIRE(min_h_gap(in) > 1e-4);  // the k-th excluding element cannot switch under eps = 1e-6
    BalancingConfig config;
    config.load_coef = 0.3;
    check_gradients(in, config, "load random");
  }
}

TEST_CASE("z loss: hand-computed value and gradient", "[balancing]") {
  BalanceInputs in;
  in.tokens = 2, in.experts = 2, in.slots = 1;
  in.logits = {0, 0, std::log(3.0), 0};
  BalancingConfig config;
  config.z_coef = 0.001;
  // lse_0 = log(1 + 1) = ln2, lse_1 = log(3 + 1) = 2 ln2
  // L = 0.001/2 * (ln2^2 + 4 ln2^2) = 0.001 * 2.5 ln2^2
  BalanceResult r = compute_balancing(in, config);
  CHECK(r.terms.at("z") == Approx(0.001 * 2.5 * k_ln2 * k_ln2).epsilon(1e-12));
  // dlogits = coef 2 lse softmax / T: token 0: 0.001 ln2 [0.5, 0.5];
  // token 1: 0.001 * 2 ln2 * [0.75, 0.25] = 0.001 ln2 [1.5, 0.5]
  require_close(r.dlogits, {0.0005 * k_ln2, 0.0005 * k_ln2, 0.0015 * k_ln2, 0.0005 * k_ln2}, 1e-15, 1e-12,
                "dlogits");
  check_gradients(in, config, "z");
}

TEST_CASE("sequence-level loss: hand-computed, differs from the batch-level value", "[balancing]") {
  // T = 4, two sequences of S = 2, E = 2, k = 1, sigmoid scores (rows do not sum to 1).
  BalanceInputs in;
  in.tokens = 4, in.experts = 2, in.slots = 1, in.seq_len = 2;
  in.scores = {0.6, 0.2, 0.3, 0.3, 0.9, 0.1, 0.2, 0.6};
  in.ids = {0, 0, 0, 1};
  in.counts = {3, 1};
  BalancingConfig config;
  config.seq_coef = 0.001;
  // normalised s' = [0.75, 0.25], [0.5, 0.5], [0.9, 0.1], [0.25, 0.75]
  // seq 0: selections [2, 0], f = E/(kS) [2, 0] = [2, 0]; P = [1.25, 0.75]/2 = [0.625, 0.375]; fP = 1.25
  // seq 1: selections [1, 1], f = [1, 1]; P = [1.15, 0.85]/2 = [0.575, 0.425]; fP = 1.0
  // L = 0.001 * (1.25 + 1.0) / 2 = 0.001125
  BalanceResult r = compute_balancing(in, config);
  CHECK(r.terms.at("seq") == Approx(0.001125).epsilon(1e-12));
  check_gradients(in, config, "seq S=2");
  // One sequence of 4: f = 2/4 [3, 1] = [1.5, 0.5], P = [2.4, 1.6]/4 = [0.6, 0.4]
  // fP = 0.9 + 0.2 = 1.1, L = 0.0011 != 0.001125
  in.seq_len = 4;
  BalanceResult batch = compute_balancing(in, config);
  CHECK(batch.terms.at("seq") == Approx(0.0011).epsilon(1e-12));
  CHECK(std::abs(batch.total - r.total) > 1e-5);
  check_gradients(in, config, "seq S=T");
}

TEST_CASE("sequence-level loss with one sequence of softmax scores equals the switch loss", "[balancing]") {
  BalanceInputs in = random_inputs(8, 5, 2, 8, 7);
  BalancingConfig seq, sw;
  seq.seq_coef = 0.01;
  sw.switch_coef = 0.01;
  CHECK(compute_balancing(in, seq).total == Approx(compute_balancing(in, sw).total).epsilon(1e-12));
  // With two sequences it is a different number.
  in.seq_len = 4;
  CHECK(std::abs(compute_balancing(in, seq).total - compute_balancing(in, sw).total) > 1e-6);
  BalanceInputs sig = random_inputs(8, 5, 2, 4, 8, true);
  check_gradients(sig, seq, "seq sigmoid random");
  check_gradients(in, seq, "seq softmax random");
}

TEST_CASE("device-level loss: hand-computed, D = E and D = 1", "[balancing]") {
  BalanceInputs in;
  in.tokens = 2, in.experts = 4, in.slots = 2;
  in.scores = {0.4, 0.3, 0.2, 0.1, 0.2, 0.4, 0.1, 0.3};
  in.ids = {0, 1, 1, 3};
  in.counts = {1, 2, 0, 1};
  BalancingConfig config;
  config.device_coef = 0.05;
  config.device_groups = 2;
  // f = E/(kT) counts = 4/4 [1, 2, 0, 1] = [1, 2, 0, 1]; P = [0.3, 0.35, 0.15, 0.2]
  // groups {0,1}, {2,3}: f' = [1.5, 0.5], P' = [0.65, 0.35]; sum = 0.975 + 0.175 = 1.15
  // L = 0.05 * 1.15 = 0.0575;  dscores[t,i] = alpha2 f'_g / T = [0.0375, 0.0375, 0.0125, 0.0125]
  BalanceResult r = compute_balancing(in, config);
  CHECK(r.terms.at("device") == Approx(0.0575).epsilon(1e-12));
  require_close(r.dscores, {0.0375, 0.0375, 0.0125, 0.0125, 0.0375, 0.0375, 0.0125, 0.0125}, 1e-15, 1e-12,
                "dscores");
  check_gradients(in, config, "device");

  // D = E: f'_g = f_i = E counts_i/(kT), P'_g = P_i, so alpha2 sum f_i P_i is the expert-level
  // (Switch) loss with alpha2 in place of alpha: device(0.3) = 3 * switch(0.1), gradients too.
  BalanceInputs rnd = random_inputs(7, 6, 2, 7, 21);
  BalancingConfig dev, sw;
  dev.device_coef = 0.3;
  dev.device_groups = 6;
  sw.switch_coef = 0.1;
  BalanceResult d = compute_balancing(rnd, dev), s = compute_balancing(rnd, sw);
  CHECK(d.total == Approx(3 * s.total).epsilon(1e-12));
  std::vector<double> s3 = s.dscores;
  for (double& x : s3) x *= 3;
  require_close(d.dscores, s3, 1e-15, 1e-12, "device D=E vs 3 switch");
  // D = 1, no drops, softmax: f' = sum counts / (kT) = 1 and P' = sum_i P_i = 1, so L = alpha2.
  dev.device_groups = 1;
  CHECK(compute_balancing(rnd, dev).total == Approx(0.3).epsilon(1e-12));
  dev.device_groups = 3;
  check_gradients(rnd, dev, "device D=3");
}

TEST_CASE("all terms together: total is the sum and every gradient matches", "[balancing]") {
  BalanceInputs in = random_inputs(6, 4, 2, 3, 5, true);
  REQUIRE(min_h_gap(in) > 1e-4);
  BalancingConfig config;
  config.switch_coef = 0.01, config.importance_coef = 0.1, config.load_coef = 0.2, config.z_coef = 0.001;
  config.seq_coef = 0.003, config.device_coef = 0.05, config.device_groups = 2;
  BalanceResult r = compute_balancing(in, config);
  REQUIRE(r.terms.size() == 6);
  double sum = 0;
  for (const auto& [name, value] : r.terms) {
    BalancingConfig one;
    one.device_groups = config.device_groups;
    if (name == "switch") one.switch_coef = config.switch_coef;
    if (name == "importance") one.importance_coef = config.importance_coef;
    if (name == "load") one.load_coef = config.load_coef;
    if (name == "z") one.z_coef = config.z_coef;
    if (name == "seq") one.seq_coef = config.seq_coef;
    if (name == "device") one.device_coef = config.device_coef;
    INFO(name);
    CHECK(compute_balancing(in, one).total == Approx(value).epsilon(1e-14));
    CHECK(value > 0);
    sum += value;
  }
  CHECK(r.total == Approx(sum).epsilon(1e-14));
  check_gradients(in, config, "all");
  // Disabled terms leave no entry and no gradient.
  CHECK(compute_balancing(in, BalancingConfig{}).terms.empty());
  CHECK(compute_balancing(in, BalancingConfig{}).dscores.empty());
}

TEST_CASE("load_stats: CV, max/mean and entropy", "[balancing]") {
  // counts [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], var = 14/4 = 3.5, cv = sqrt(3.5)/3
  // max/mean = 6/3 = 2. Scores: token 0 uniform -> ln 4; token 1 [0.5, 0.5, 0, 0] -> ln 2;
  // mean entropy = 1.5 ln 2.
  moe::LoadStats st = moe::load_stats({1, 2, 3, 6}, {0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 0, 0}, 4);
  CHECK(st.cv == Approx(std::sqrt(3.5) / 3).epsilon(1e-12));
  CHECK(st.max_over_mean == Approx(2.0).epsilon(1e-12));
  CHECK(st.entropy == Approx(1.5 * k_ln2).epsilon(1e-12));
  // Sigmoid scores are normalised per token first: [0.5]*4 -> uniform -> ln 4; [0.2, 0.2, 0, 0] -> ln 2.
  moe::LoadStats sig = moe::load_stats({2, 2, 2, 2}, {0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0, 0}, 4);
  CHECK(sig.cv == 0);
  CHECK(sig.max_over_mean == Approx(1.0).epsilon(1e-12));
  CHECK(sig.entropy == Approx(1.5 * k_ln2).epsilon(1e-12));
  // No scores (hash routing): entropy 0; nothing routed: cv and max/mean 0.
  moe::LoadStats none = moe::load_stats({0, 0, 0}, {}, 3);
  CHECK(none.entropy == 0);
  CHECK(none.cv == 0);
  CHECK(none.max_over_mean == 0);
}

TEST_CASE("update_expert_bias moves each bias against its load's deviation from the mean", "[balancing]") {
  // loads [3, 1, 2, 2], mean 2: signs [+1, -1, 0, 0]
  std::vector<double> bias = {0, 0, 0.5, -0.5};
  moe::update_expert_bias(bias, {3, 1, 2, 2}, 0.001);
  require_close(bias, {-0.001, 0.001, 0.5, -0.5}, 0, 0, "bias");
  // Non-integer mean 5/3: loads [1, 1, 3] -> signs [-1, -1, +1].
  std::vector<double> b2 = {0.1, 0.2, 0.3};
  moe::update_expert_bias(b2, {1, 1, 3}, 0.01);
  require_close(b2, {0.11, 0.21, 0.29}, 1e-15, 1e-12, "bias non-integer mean");
  REQUIRE_THROWS_WITH(moe::update_expert_bias(b2, {1, 2}, 0.01),
                      Catch::Contains("update_expert_bias: bias has 3 values, loads has 2"));
}

TEST_CASE("empty micro-batch gives zero terms", "[balancing]") {
  BalanceInputs in;
  in.experts = 4, in.slots = 2, in.seq_len = 4;
  in.counts = {0, 0, 0, 0};
  BalancingConfig config;
  config.switch_coef = 0.01, config.device_coef = 0.1, config.device_groups = 2, config.z_coef = 0.001;
  config.seq_coef = 0.01, config.importance_coef = 0.1;
  BalanceResult r = compute_balancing(in, config);
  CHECK(r.terms.size() == 5);
  CHECK(r.total == 0);
  CHECK(r.dscores.empty());
}

TEST_CASE("bad inputs name the field", "[balancing]") {
  BalancingConfig sw;
  sw.switch_coef = 0.01;
  auto bad = [](auto edit) {
    BalanceInputs in = random_inputs(4, 4, 2, 2, 3);
    edit(in);
    return in;
  };
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.scores.resize(12); }), sw),
                      Catch::Contains("balancing: scores has 12 values, expected T*E = 16"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.logits.resize(15); }), sw),
                      Catch::Contains("balancing: logits has 15 values, expected T*E = 16"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.weights.resize(7); }), sw),
                      Catch::Contains("balancing: weights has 7 values, expected T*k = 8"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.ids.resize(9); }), sw),
                      Catch::Contains("balancing: ids has 9 values, expected T*k = 8"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.counts.resize(3); }), sw),
                      Catch::Contains("balancing: counts has 3 values, expected E = 4"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.clean.resize(2); }), sw),
                      Catch::Contains("balancing: clean has 2 values, expected T*E = 16"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.raw_noise.resize(17); }), sw),
                      Catch::Contains("balancing: raw_noise has 17 values, expected T*E = 16"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.normal.resize(1); }), sw),
                      Catch::Contains("balancing: normal has 1 values, expected T*E = 16"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.ids[3] = 4; }), sw),
                      Catch::Contains("balancing: ids[3] = 4 is outside [-1, E = 4)"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.counts[1] = -2; }), sw),
                      Catch::Contains("balancing: counts[1] = -2 is negative"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.slots = 0; }), sw),
                      Catch::Contains("balancing: slots = 0"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.scores.clear(); }), sw),
                      Catch::Contains("balancing: switch_coef = 0.01 needs scores"));

  BalancingConfig neg;
  neg.z_coef = -1;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs&) {}), neg),
                      Catch::Contains("balancing: z_coef = -1, expected a finite value >= 0"));

  BalancingConfig imp;
  imp.importance_coef = 0.1;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.ids.clear(); }), imp),
                      Catch::Contains("importance_coef = 0.1 needs ids"));

  BalancingConfig load;
  load.load_coef = 0.1;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.raw_noise.clear(), in.normal.clear(); }), load),
                      Catch::Contains("load_coef = 0.1 needs the noisy-gating inputs clean, raw_noise and normal, "
                                      "but raw_noise, normal is empty: only a noisy top-k router"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.slots = 4, in.ids.resize(16, 0),
                                                                    in.weights.resize(16, 0); }), load),
                      Catch::Contains("load_coef needs slots < experts"));

  BalancingConfig z;
  z.z_coef = 0.001;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.logits.clear(); }), z),
                      Catch::Contains("z_coef = 0.001 needs logits"));

  BalancingConfig seq;
  seq.seq_coef = 0.001;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.seq_len = 3; }), seq),
                      Catch::Contains("balancing: seq_len = 3, expected >= 1 and dividing tokens = 4"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.seq_len = 0; }), seq),
                      Catch::Contains("balancing: seq_len = 0"));
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs& in) { in.scores[4] = in.scores[5] = in.scores[6] =
                                                                    in.scores[7] = 0; }), seq),
                      Catch::Contains("balancing: scores of token 1 sum to 0"));

  BalancingConfig dev;
  dev.device_coef = 0.1;
  dev.device_groups = 3;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs&) {}), dev),
                      Catch::Contains("balancing: device_groups = 3 does not divide experts = 4"));
  dev.device_groups = 0;
  REQUIRE_THROWS_WITH(compute_balancing(bad([](BalanceInputs&) {}), dev),
                      Catch::Contains("balancing: device_groups = 0, expected >= 1"));

  REQUIRE_THROWS_WITH(moe::load_stats({1, 2, 3}, {}, 4), Catch::Contains("load_stats: counts has 3 values, expected E = 4"));
  REQUIRE_THROWS_WITH(moe::load_stats({1, 2, 3, 4}, {0.1, 0.2, 0.3}, 4),
                      Catch::Contains("load_stats: scores has 3 values, expected a multiple of E = 4"));
  REQUIRE_THROWS_WITH(moe::load_stats({1, 2, 3, 4}, {0.5, -0.1, 0.3, 0.3}, 4),
                      Catch::Contains("load_stats: scores[0,1] = -0.1 is negative"));
}

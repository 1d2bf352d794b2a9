// CUDA balancing ops vs the CPU reference (identical f32 inputs, gradients accumulated onto the
// same random values): device-level, importance, z, sequence-level and load losses, the expert
// counts (exact) and the bias update (exact), over awkward sizes and skewed loads; every term's
// on_device path on the GPU against the CPU; the page-locked read back of the EP count exchange.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cuda/runtime.h"
#include "routing/balancing_terms.h"
#include "src/ops/op_profile.h"
#include "src/ops/ops.h"
#include "src/tensor/pinned_buffer.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

struct Shape4 {
  int64_t tokens, experts, k, seq_len;
};
const Shape4 k_shapes[] = {{1, 4, 1, 1}, {7, 6, 2, 7}, {19, 8, 3, 19}, {989, 64, 6, 43}, {64, 300, 2, 16}};

// How the slots fall: random (with some dropped), all on the last expert, none at all.
enum class Skew { random, one_expert, all_dropped };
const Skew k_skews[] = {Skew::random, Skew::one_expert, Skew::all_dropped};

Mirror skewed_ids(const Shape4& s, Skew skew, uint64_t seed) {
  std::vector<int32_t> ids = random_int_values(s.tokens * s.k, s.experts + 1, seed);
  for (int32_t& id : ids) id -= 1;  // -1 .. E-1
  if (skew == Skew::one_expert) std::fill(ids.begin(), ids.end(), static_cast<int32_t>(s.experts - 1));
  if (skew == Skew::all_dropped) std::fill(ids.begin(), ids.end(), -1);
  return mirror_ids(ids, {s.tokens, s.k});
}

Mirror value_pair() {
  const std::vector<double> nan(1, std::numeric_limits<double>::quiet_NaN());
  return {Tensor::from_vector(nan, {1}, DType::f64), Tensor::from_vector(nan, {1}, DType::f64, gpu())};
}

// Same value within 1e-5 relative, the gradient within 1e-5 relative of its largest entry.
void require_same(const Mirror& value, const Mirror& grad, const std::string& what) {
  const double ref = value.cpu.to_vector<double>()[0], got = value.gpu.to_vector<double>()[0];
  INFO(what << " value gpu " << got << " cpu " << ref);
  REQUIRE(std::abs(got - ref) <= 1e-5 * std::abs(ref) + 1e-12);
  const double scale = max_abs(grad.cpu.to_vector<double>());
  require_close(grad.gpu, grad.cpu, 1e-5 * scale + 1e-12, 1e-5, what + " gradient");
}

std::string label(const Shape4& s, Skew skew) {
  return "T " + std::to_string(s.tokens) + " E " + std::to_string(s.experts) + " k " + std::to_string(s.k) +
         " skew " + std::to_string(static_cast<int>(skew));
}

}  // namespace

TEST_CASE("cuda importance and device-level balance match the CPU, skewed and empty experts", "[cuda][balance]") {
  for (const Shape4& s : k_shapes) {
    for (Skew skew : k_skews) {
      INFO(label(s, skew));
      const uint64_t seed = seed_of(50, {s.tokens, s.experts, s.k, static_cast<int64_t>(skew)});
      const Mirror ids = skewed_ids(s, skew, seed);
      const Mirror weights = random_mirror({s.tokens, s.k}, DType::f32, seed + 1, 0.05, 1.0);
      Mirror value = value_pair(), dweights = random_mirror({s.tokens, s.k}, DType::f32, seed + 2);
      ops::importance_balance(weights.cpu, ids.cpu, s.experts, 0.3, value.cpu, dweights.cpu);
      ops::importance_balance(weights.gpu, ids.gpu, s.experts, 0.3, value.gpu, dweights.gpu);
      require_same(value, dweights, "importance");

      const Mirror sums = random_mirror({s.experts}, DType::f32, seed + 3, 0.0, 50.0);
      // The same counts given (as the router makes them): the GPU's from-counts path against the CPU.
      std::vector<int64_t> count_values(static_cast<size_t>(s.experts), 0);
      for (int32_t id : ids.cpu.to_vector<int32_t>())
        if (id >= 0) ++count_values[static_cast<size_t>(id)];
      const Mirror counts{Tensor::from_vector(count_values, {s.experts}, DType::i64),
                          Tensor::from_vector(count_values, {s.experts}, DType::i64, gpu())};
      for (int64_t groups : {int64_t{1}, s.experts % 2 == 0 ? int64_t{2} : int64_t{1}, s.experts}) {
        INFO("groups " << groups);
        Mirror device_value = value_pair(), row = poisoned_pair({s.experts}, DType::f32);
        ops::device_balance(sums.cpu, ids.cpu, groups, 0.1, device_value.cpu, row.cpu);
        ops::device_balance(sums.gpu, ids.gpu, groups, 0.1, device_value.gpu, row.gpu);
        require_same(device_value, row, "device-level");
        Mirror given_value = value_pair(), given_row = poisoned_pair({s.experts}, DType::f32);
        given_value.cpu = device_value.cpu, given_row.cpu = row.cpu;
        ops::device_balance_from_counts(sums.gpu, counts.gpu, s.tokens, s.k, groups, 0.1, given_value.gpu,
                                        given_row.gpu);
        require_same(given_value, given_row, "device-level from counts");
      }
      Mirror switch_value = value_pair(), switch_row = poisoned_pair({s.experts}, DType::f32);
      ops::switch_balance(sums.cpu, ids.cpu, 0.1, switch_value.cpu, switch_row.cpu);
      ops::switch_balance(sums.gpu, ids.gpu, 0.1, switch_value.gpu, switch_row.gpu);
      require_same(switch_value, switch_row, "switch");
      Mirror given_value = value_pair(), given_row = poisoned_pair({s.experts}, DType::f32);
      given_value.cpu = switch_value.cpu, given_row.cpu = switch_row.cpu;
      ops::switch_balance_from_counts(sums.gpu, counts.gpu, s.tokens, s.k, 0.1, given_value.gpu, given_row.gpu);
      require_same(given_value, given_row, "switch from counts");
    }
  }
}

TEST_CASE("cuda z-loss and sequence-level balance match the CPU", "[cuda][balance]") {
  for (const Shape4& s : k_shapes) {
    for (Skew skew : k_skews) {
      INFO(label(s, skew));
      const uint64_t seed = seed_of(60, {s.tokens, s.experts, s.k, static_cast<int64_t>(skew)});
      const Mirror logits = random_mirror({s.tokens, s.experts}, DType::f32, seed, -8.0, 8.0);
      Mirror value = value_pair(), dlogits = random_mirror({s.tokens, s.experts}, DType::f32, seed + 1);
      ops::z_balance(logits.cpu, 0.01, value.cpu, dlogits.cpu);
      ops::z_balance(logits.gpu, 0.01, value.gpu, dlogits.gpu);
      require_same(value, dlogits, "z");

      const Mirror scores = random_mirror({s.tokens, s.experts}, DType::f32, seed + 2, 0.01, 1.0);
      const Mirror ids = skewed_ids(s, skew, seed + 3);
      Mirror seq_value = value_pair(), dscores = random_mirror({s.tokens, s.experts}, DType::f32, seed + 4);
      ops::seq_balance(scores.cpu, ids.cpu, s.seq_len, 0.2, seq_value.cpu, dscores.cpu);
      ops::seq_balance(scores.gpu, ids.gpu, s.seq_len, 0.2, seq_value.gpu, dscores.gpu);
      require_same(seq_value, dscores, "seq");
    }
  }
}

TEST_CASE("cuda load balance of noisy gating matches the CPU, one expert far ahead or not", "[cuda][balance]") {
  for (const Shape4& s : k_shapes) {
    if (s.k >= s.experts || s.experts < 2) continue;
    for (bool ahead : {false, true}) {
      INFO(label(s, Skew::random) << " expert 0 ahead " << ahead);
      const uint64_t seed = seed_of(70, {s.tokens, s.experts, s.k, ahead ? 1 : 0});
      Mirror clean = random_mirror({s.tokens, s.experts}, DType::f32, seed, -2.0, 2.0);
      if (ahead) {
        std::vector<float> v = clean.cpu.to_vector<float>();
        for (int64_t t = 0; t < s.tokens; ++t) v[static_cast<size_t>(t * s.experts)] += 6.0f;
        clean = mirror_values(v, {s.tokens, s.experts}, DType::f32);
      }
      const Mirror raw = random_mirror({s.tokens, s.experts}, DType::f32, seed + 1);
      const Mirror normal = random_mirror({s.tokens, s.experts}, DType::f32, seed + 2, -1.5, 1.5);
      Mirror value = value_pair(), dclean = random_mirror({s.tokens, s.experts}, DType::f32, seed + 3);
      Mirror draw = random_mirror({s.tokens, s.experts}, DType::f32, seed + 4);
      ops::load_balance(clean.cpu, raw.cpu, normal.cpu, s.k, 0.5, value.cpu, dclean.cpu, draw.cpu);
      ops::load_balance(clean.gpu, raw.gpu, normal.gpu, s.k, 0.5, value.gpu, dclean.gpu, draw.gpu);
      require_same(value, dclean, "load (clean)");
      require_same(value, draw, "load (raw noise)");
    }
  }
}

// The router-entropy metric of a logging step, computed on the device: softmax-like rows, rows
// with zeros, one-hot rows (entropy 0) and unnormalised sigmoid-like rows.
TEST_CASE("cuda row entropy matches the CPU, zeros and one-hot rows included", "[cuda][balance]") {
  for (const Shape4& s : k_shapes) {
    for (Skew skew : k_skews) {
      INFO(label(s, skew));
      const uint64_t seed = seed_of(90, {s.tokens, s.experts, static_cast<int64_t>(skew)});
      const std::vector<double> drawn = random_values(s.tokens * s.experts, seed, 0.0, 1.0);
      std::vector<float> scores(drawn.begin(), drawn.end());
      for (int64_t t = 0; t < s.tokens; ++t) {
        float* row = &scores[static_cast<size_t>(t * s.experts)];
        if (skew == Skew::one_expert) {
          for (int64_t e = 0; e < s.experts; ++e) row[e] = e == s.experts - 1 ? 1.0f : 0.0f;
        } else if (skew == Skew::all_dropped) {
          for (int64_t e = 0; e < s.experts; e += 2) row[e] = 0.0f;  // every other expert never scored
        }
      }
      const Mirror x = mirror_values(scores, {s.tokens, s.experts}, DType::f32);
      Mirror acc{Tensor::from_vector(std::vector<double>{0.5}, {1}, DType::f64),
                 Tensor::from_vector(std::vector<double>{0.5}, {1}, DType::f64, gpu())};
      const double weight = 1.0 / static_cast<double>(s.tokens);
      ops::row_entropy_accumulate(x.cpu, acc.cpu, weight);
      ops::row_entropy_accumulate(x.gpu, acc.gpu, weight);
      const double ref = acc.cpu.to_vector<double>()[0], got = acc.gpu.to_vector<double>()[0];
      INFO("gpu " << got << " cpu " << ref);
      REQUIRE(std::abs(got - ref) <= 1e-9 * std::abs(ref));
      if (skew == Skew::one_expert) REQUIRE(ref == 0.5);  // one-hot rows add nothing to the 0.5 it held
      if (skew != Skew::one_expert) REQUIRE(ref > 0.5);
    }
  }
}

TEST_CASE("cuda expert counts and the bias update match the CPU exactly", "[cuda][balance]") {
  for (const Shape4& s : k_shapes) {
    for (Skew skew : k_skews) {
      INFO(label(s, skew));
      const uint64_t seed = seed_of(80, {s.tokens, s.experts, s.k, static_cast<int64_t>(skew)});
      const Mirror ids = skewed_ids(s, skew, seed);
      std::vector<int64_t> start(static_cast<size_t>(s.experts));
      for (size_t e = 0; e < start.size(); ++e) start[e] = static_cast<int64_t>(e % 3);
      Mirror counts{Tensor::from_vector(start, {s.experts}, DType::i64),
                    Tensor::from_vector(start, {s.experts}, DType::i64, gpu())};
      ops::count_experts(ids.cpu, s.experts, counts.cpu);
      ops::count_experts(ids.gpu, s.experts, counts.gpu);
      REQUIRE(counts.gpu.to_vector<int64_t>() == counts.cpu.to_vector<int64_t>());

      Mirror bias = random_mirror({s.experts}, DType::f32, seed + 1);
      for (float skip : {1.0f, std::numeric_limits<float>::quiet_NaN()}) {
        const std::vector<float> scale{skip};
        ops::update_expert_bias(bias.cpu, counts.cpu, 0.001, Tensor::from_vector(scale, {1}, DType::f32));
        ops::update_expert_bias(bias.gpu, counts.gpu, 0.001, Tensor::from_vector(scale, {1}, DType::f32, gpu()));
        REQUIRE(bias.gpu.to_vector<float>() == bias.cpu.to_vector<float>());
      }
    }
  }
}

TEST_CASE("cuda: every balancing term's on_device path matches the CPU's", "[cuda][balance]") {
  const Shape4 s{24, 8, 2, 6};
  const uint64_t seed = 90;
  const Mirror scores = random_mirror({s.tokens, s.experts}, DType::f32, seed, 0.01, 1.0);
  const Mirror logits = random_mirror({s.tokens, s.experts}, DType::f32, seed + 1, -3.0, 3.0);
  const Mirror weights = random_mirror({s.tokens, s.k}, DType::f32, seed + 2, 0.05, 1.0);
  const Mirror kept = skewed_ids(s, Skew::random, seed + 3);
  const Mirror routed = mirror_ids(random_int_values(s.tokens * s.k, s.experts, seed + 4), {s.tokens, s.k});
  const Mirror clean = random_mirror({s.tokens, s.experts}, DType::f32, seed + 5, -2.0, 2.0);
  const Mirror raw = random_mirror({s.tokens, s.experts}, DType::f32, seed + 6);
  const Mirror normal = random_mirror({s.tokens, s.experts}, DType::f32, seed + 7);
  // Router statistics: 0 none; 1 the router's score sums and routed counts; 2 also kept = routed
  // (nothing dropped), with the kept counts given too.
  for (const BalancingTerm& term : balancing_terms()) {
    for (AuxCount aux_count : {AuxCount::routed, AuxCount::kept}) {
      for (int sums_mode = 0; sums_mode < 3; ++sums_mode) {
        INFO(term.name << (aux_count == AuxCount::routed ? " (routed)" : " (kept)") << " router sums " << sums_mode);
        BalancingConfig config;
        config.device_groups = 2;
        config.aux_count = aux_count;
        config.*term.coef = 0.2;
        auto run = [&](bool on_gpu, Tensor& value) {
          auto pick = [on_gpu](const Mirror& m) { return on_gpu ? m.gpu : m.cpu; };
          const Device device = on_gpu ? gpu() : Device::cpu();
          DeviceBalanceInputs in{pick(scores), pick(logits), pick(weights), pick(sums_mode == 2 ? routed : kept),
                                 pick(routed), pick(clean),  pick(raw),     pick(normal),
                                 s.seq_len};
          if (sums_mode > 0) {
            in.score_sums = Tensor::empty({s.experts}, DType::f32, device);
            ops::column_sum(in.scores, in.score_sums);
            in.routed_counts = Tensor::zeros({s.experts}, DType::i64, device);
            ops::count_experts(in.routed_ids, s.experts, in.routed_counts);
            if (sums_mode == 2) in.kept_counts = in.routed_counts;
          }
          DeviceBalanceGrads g;
          for (Tensor* t : {&g.dscores, &g.dlogits, &g.dclean, &g.draw_noise})
            *t = Tensor::zeros({s.tokens, s.experts}, DType::f32, device);
          g.dweights = Tensor::zeros({s.tokens, s.k}, DType::f32, device);
          g.score_row = Tensor::zeros({s.experts}, DType::f32, device);
          term.on_device(in, config, value, g);
          std::vector<double> all;
          for (const Tensor* t : {&g.dscores, &g.dlogits, &g.dweights, &g.dclean, &g.draw_noise, &g.score_row}) {
            const std::vector<double> v = t->to_vector<double>();
            all.insert(all.end(), v.begin(), v.end());
          }
          return all;
        };
        Mirror value = value_pair();
        const std::vector<double> cpu_grads = run(false, value.cpu), gpu_grads = run(true, value.gpu);
        const double ref = value.cpu.to_vector<double>()[0];
        REQUIRE(std::abs(value.gpu.to_vector<double>()[0] - ref) <= 1e-5 * std::abs(ref));
        require_close(gpu_grads, cpu_grads, 1e-5 * max_abs(cpu_grads), 1e-5, "gradients");
      }
    }
  }
}

TEST_CASE("cuda PinnedBuffer reads device values into page-locked memory with one host wait", "[cuda][balance]") {
  const std::vector<int64_t> values = {7, -1, 42, 0, 1234567890123};
  const Tensor device_values = Tensor::from_vector(values, {5}, DType::i64, gpu());
  PinnedBuffer buffer;
  const int64_t waits = ops::host_waits();
  const int64_t* read = buffer.read<int64_t>(device_values);
  REQUIRE(ops::host_waits() - waits == 1);
  REQUIRE(std::vector<int64_t>(read, read + 5) == values);
  REQUIRE(buffer.pinned());
  REQUIRE(cuda::is_pinned(read));
  // Reused: a smaller read keeps the same storage.
  const int64_t* again = buffer.read<int64_t>(device_values.rows(1, 3));
  REQUIRE(again == read);
  REQUIRE(again[0] == -1);
  REQUIRE(again[1] == 42);
  REQUIRE_THROWS_WITH(buffer.read<int32_t>(device_values),
                      Catch::Contains("PinnedBuffer::read: a i64 tensor read as 4-byte values"));
}

}  // namespace moe::test

// CUDA MoE ops vs the CPU reference: the plain softmax top-k router (ids exact, ties to the
// lower index) and its backward, the stable expert sort (exact), and the weighted combine,
// with and without dropped slots (id -1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>

#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

// Router logits with no near-ties: each row is a random permutation of well-separated levels
// (spacing 0.05) plus jitter below 0.01, so the top-k order cannot depend on rounding.
Mirror separated_logits(int64_t tokens, int64_t experts, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> jitter(0.0, 0.01);
  std::vector<float> values(static_cast<size_t>(tokens * experts));
  std::vector<int64_t> order(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), int64_t{0});
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t e = 0; e < experts; ++e) {
      values[static_cast<size_t>(t * experts + e)] =
          static_cast<float>(-2.0 + 0.05 * static_cast<double>(order[static_cast<size_t>(e)]) + jitter(rng));
    }
  }
  return mirror_values(values, {tokens, experts}, DType::f32);
}

struct RouterOut {
  Mirror probs, ids, weights;
};

ops::TopKOptions softmax_topk(int64_t k, bool renormalize) {
  ops::TopKOptions o;
  o.k = k;
  o.renormalize = renormalize;
  return o;
}

RouterOut route_both(const Mirror& logits, int64_t k, bool renormalize) {
  const int64_t tokens = logits.cpu.size(0), experts = logits.cpu.size(1);
  RouterOut r{poisoned_pair({tokens, experts}, DType::f32), poisoned_pair({tokens, k}, DType::i32),
              poisoned_pair({tokens, k}, DType::f32)};
  ops::router_topk_forward(logits.cpu, Tensor(), softmax_topk(k, renormalize), r.probs.cpu, r.ids.cpu, r.weights.cpu);
  ops::router_topk_forward(logits.gpu, Tensor(), softmax_topk(k, renormalize), r.probs.gpu, r.ids.gpu, r.weights.gpu);
  return r;
}

TEST_CASE("cuda router softmax top-k matches the CPU, ids exactly", "[cuda][router]") {
  for (int64_t experts : {1, 8, 64, 200}) {
    for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{6}, experts}) {
      if (k > experts) continue;
      for (int64_t tokens : {1, 7, 19, 989}) {
        for (bool renormalize : {false, true}) {
          INFO("experts " << experts << " k " << k << " tokens " << tokens << " renormalize " << renormalize);
          const uint64_t seed = seed_of(31, {experts, k, tokens, renormalize});
          Mirror logits = separated_logits(tokens, experts, seed);
          RouterOut r = route_both(logits, k, renormalize);
          require_match(r.probs, {1e-6, 1e-4}, "router probs");
          require_equal(r.ids.gpu, r.ids.cpu, "router ids");
          require_match(r.weights, {1e-6, 1e-4}, "router weights");

          Mirror dweights = random_mirror({tokens, k}, DType::f32, seed + 1);
          Mirror dscores = random_mirror({tokens, experts}, DType::f32, seed + 2, -0.1, 0.1);
          Mirror dlogits = poisoned_pair({tokens, experts}, DType::f32);
          Mirror probs = mirror_of(r.probs.cpu, DType::f32), weights = mirror_of(r.weights.cpu, DType::f32);
          const auto o = softmax_topk(k, renormalize);
          ops::router_topk_backward(logits.cpu, probs.cpu, r.ids.cpu, weights.cpu, dweights.cpu, dscores.cpu, o,
                                    dlogits.cpu);
          ops::router_topk_backward(logits.gpu, probs.gpu, r.ids.cpu.to(gpu()), weights.gpu, dweights.gpu,
                                    dscores.gpu, o, dlogits.gpu);
          require_match(dlogits, {1e-6, 1e-3}, "router dlogits");
        }
      }
    }
  }
}

TEST_CASE("cuda router breaks exact ties toward the lower expert index", "[cuda][router]") {
  // Integer logits in [0, 3]: many exactly equal probabilities per row, none nearly equal.
  const int64_t tokens = 300, experts = 16, k = 4;
  std::vector<int32_t> levels = random_int_values(tokens * experts, 4, 32);
  std::vector<float> values(levels.begin(), levels.end());
  Mirror logits = mirror_values(values, {tokens, experts}, DType::f32);
  RouterOut r = route_both(logits, k, true);
  require_equal(r.ids.gpu, r.ids.cpu, "router ids with ties");
  auto ids = r.ids.gpu.to_vector<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {  // the expected order, independently of the CPU
    std::vector<int32_t> order(static_cast<size_t>(experts));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return values[t * experts + a] > values[t * experts + b]; });
    for (int64_t s = 0; s < k; ++s) REQUIRE(ids[static_cast<size_t>(t * k + s)] == order[static_cast<size_t>(s)]);
  }
}

TEST_CASE("cuda moe_sort_by_expert matches the CPU exactly", "[cuda][permute]") {
  for (int64_t experts : {1, 4, 64, 300}) {
    for (int64_t k : {1, 2, 6}) {
      for (int64_t tokens : {1, 7, 19, 989, 3000}) {
        INFO("experts " << experts << " k " << k << " tokens " << tokens);
        Mirror ids = mirror_ids(random_int_values(tokens * k, experts, seed_of(33, {experts, k, tokens})),
                                {tokens, k});
        Mirror sorted = poisoned_pair({tokens * k}, DType::i32);
        Mirror pos = poisoned_pair({tokens * k}, DType::i32);
        auto counts_cpu = ops::moe_sort_by_expert(ids.cpu, experts, sorted.cpu, pos.cpu);
        auto counts_gpu = ops::moe_sort_by_expert(ids.gpu, experts, sorted.gpu, pos.gpu);
        REQUIRE(counts_gpu == counts_cpu);
        require_equal(sorted.gpu, sorted.cpu, "sorted_tokens");
        require_equal(pos.gpu, pos.cpu, "slot_pos");
      }
    }
  }
}

TEST_CASE("cuda moe_sort_by_expert rejects expert ids out of range", "[cuda][permute]") {
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{0, 3, 1, 7}, {2, 2}, DType::i32, gpu());
  Tensor sorted = Tensor::empty({4}, DType::i32, gpu()), pos = Tensor::empty({4}, DType::i32, gpu());
  REQUIRE_THROWS_WITH(ops::moe_sort_by_expert(ids, 4, sorted, pos),
                      Catch::Contains("expert id 7") && Catch::Contains("outside [0, 4)"));
}

TEST_CASE("cuda moe_combine forward and backward match the CPU", "[cuda][permute]") {
  for (int64_t dim : {1, 37, 64}) {
    for (int64_t k : {1, 2, 6}) {
      for (int64_t tokens : {1, 7, 19, 989}) {
        INFO("dim " << dim << " k " << k << " tokens " << tokens);
        const uint64_t seed = seed_of(34, {dim, k, tokens});
        const int64_t experts = 8;
        Mirror ids = mirror_ids(random_int_values(tokens * k, experts, seed), {tokens, k});
        Tensor sorted = poisoned_on({tokens * k}, DType::i32, Device::cpu());
        Tensor slot_cpu = poisoned_on({tokens * k}, DType::i32, Device::cpu());
        ops::moe_sort_by_expert(ids.cpu, experts, sorted, slot_cpu);
        Mirror slot_pos{slot_cpu, slot_cpu.to(gpu())};
        Mirror y = random_mirror({tokens * k, dim}, DType::bf16, seed + 1);
        Mirror weights = random_mirror({tokens, k}, DType::f32, seed + 2, 0.0, 1.0);
        Mirror out = poisoned_pair({tokens, dim}, DType::bf16);
        ops::moe_combine_forward(y.cpu, slot_pos.cpu, weights.cpu, out.cpu);
        ops::moe_combine_forward(y.gpu, slot_pos.gpu, weights.gpu, out.gpu);
        require_match(out, bf16_tol(), "combine out");
        // With the residual and the shared experts' output added in the same pass; in place too.
        Mirror add_a = random_mirror({tokens, dim}, DType::bf16, seed + 5, -4.0, 4.0);
        Mirror add_b = random_mirror({tokens, dim}, DType::bf16, seed + 6);
        Mirror with_adds = poisoned_pair({tokens, dim}, DType::bf16);
        ops::moe_combine_forward(y.cpu, slot_pos.cpu, weights.cpu, with_adds.cpu, add_a.cpu, add_b.cpu);
        ops::moe_combine_forward(y.gpu, slot_pos.gpu, weights.gpu, with_adds.gpu, add_a.gpu, add_b.gpu);
        require_match(with_adds, bf16_tol(), "combine out + addends");
        ops::moe_combine_forward(y.cpu, slot_pos.cpu, weights.cpu, add_b.cpu, add_b.cpu);
        ops::moe_combine_forward(y.gpu, slot_pos.gpu, weights.gpu, add_b.gpu, add_b.gpu);
        require_match(add_b, bf16_tol(), "combine into its own addend");

        Mirror dout = random_mirror({tokens, dim}, DType::bf16, seed + 3);
        Mirror dy = poisoned_pair({tokens * k, dim}, DType::bf16);
        Mirror dweights = poisoned_pair({tokens, k}, DType::f32);
        ops::moe_combine_backward(y.cpu, slot_pos.cpu, weights.cpu, dout.cpu, dy.cpu, dweights.cpu);
        ops::moe_combine_backward(y.gpu, slot_pos.gpu, weights.gpu, dout.gpu, dy.gpu, dweights.gpu);
        require_match(dy, bf16_tol(), "combine dy_sorted");
        require_match(dweights, accum_tol(), "combine dweights");

        // Without the weights: dout copied to the rows, the weights per row, and back to the slots.
        Mirror dy_plain = poisoned_pair({tokens * k, dim}, DType::bf16), row_w = poisoned_pair({tokens * k}, DType::f32);
        ops::moe_combine_backward_unweighted(slot_pos.cpu, weights.cpu, dout.cpu, dy_plain.cpu, row_w.cpu);
        ops::moe_combine_backward_unweighted(slot_pos.gpu, weights.gpu, dout.gpu, dy_plain.gpu, row_w.gpu);
        require_match(dy_plain, bf16_tol(), "unweighted combine dy_sorted");
        require_match(row_w, accum_tol(), "unweighted combine row weights");
        Mirror row_values = random_mirror({tokens * k}, DType::f32, seed + 4);
        Mirror slots = poisoned_pair({tokens, k}, DType::f32);
        ops::moe_gather_slots(row_values.cpu, slot_pos.cpu, slots.cpu);
        ops::moe_gather_slots(row_values.gpu, slot_pos.gpu, slots.gpu);
        require_match(slots, accum_tol(), "gathered slots");
      }
    }
  }
}

// Ids with about a quarter of the slots dropped (-1).
std::vector<int32_t> ids_with_drops(int64_t n, int64_t experts, uint64_t seed) {
  auto ids = random_int_values(n, experts, seed);
  auto coin = random_int_values(n, 4, seed + 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (coin[i] == 0) ids[i] = -1;
  }
  return ids;
}

// The CPU sort of ids_with_drops over `experts`: its sorted tokens, and its slot rows on both devices.
struct SortedWithDrops {
  Tensor sorted_tokens;  // CPU
  Mirror slot_pos;
  int64_t used = 0;  // rows that hold a slot
};

SortedWithDrops sort_with_drops(int64_t tokens, int64_t k, int64_t experts, uint64_t seed) {
  Mirror ids = mirror_ids(ids_with_drops(tokens * k, experts, seed), {tokens, k});
  SortedWithDrops r;
  r.sorted_tokens = poisoned_on({tokens * k}, DType::i32, Device::cpu());
  Tensor slot_cpu = poisoned_on({tokens * k}, DType::i32, Device::cpu());
  for (int64_t c : ops::moe_sort_by_expert(ids.cpu, experts, r.sorted_tokens, slot_cpu)) r.used += c;
  r.slot_pos = Mirror{slot_cpu, slot_cpu.to(gpu())};
  return r;
}

TEST_CASE("cuda moe_sort_by_expert with dropped slots matches the CPU exactly", "[cuda][permute]") {
  for (int64_t experts : {1, 4, 64, 300}) {
    for (int64_t k : {1, 2, 6}) {
      for (int64_t tokens : {1, 7, 19, 989, 3000}) {
        INFO("experts " << experts << " k " << k << " tokens " << tokens);
        Mirror ids = mirror_ids(ids_with_drops(tokens * k, experts, seed_of(37, {experts, k, tokens})), {tokens, k});
        Mirror sorted = poisoned_pair({tokens * k}, DType::i32);
        Mirror pos = poisoned_pair({tokens * k}, DType::i32);
        auto counts_cpu = ops::moe_sort_by_expert(ids.cpu, experts, sorted.cpu, pos.cpu);
        auto counts_gpu = ops::moe_sort_by_expert(ids.gpu, experts, sorted.gpu, pos.gpu);
        REQUIRE(counts_gpu == counts_cpu);
        require_equal(sorted.gpu, sorted.cpu, "sorted_tokens (rows past the used ones are -1 on both)");
        require_equal(pos.gpu, pos.cpu, "slot_pos");
      }
    }
  }
  Tensor bad = Tensor::from_vector(std::vector<int32_t>{0, -1, -2, 1}, {2, 2}, DType::i32, gpu());
  Tensor sorted = Tensor::empty({4}, DType::i32, gpu()), pos = Tensor::empty({4}, DType::i32, gpu());
  REQUIRE_THROWS_WITH(ops::moe_sort_by_expert(bad, 4, sorted, pos),
                      Catch::Contains("expert id -2") && Catch::Contains("outside [0, 4)"));
}

TEST_CASE("cuda moe_sort_by_expert into device offsets matches the CPU, skewed and empty experts", "[cuda][permute]") {
  for (int64_t experts : {1, 4, 64, 300}) {
    for (int64_t k : {1, 6}) {
      for (int64_t tokens : {1, 19, 3000}) {
        for (int skew = 0; skew < 3; ++skew) {  // random with drops; every slot to expert 0; all dropped
          INFO("experts " << experts << " k " << k << " tokens " << tokens << " skew " << skew);
          std::vector<int32_t> v = ids_with_drops(tokens * k, experts, seed_of(38, {experts, k, tokens}));
          if (skew > 0) std::fill(v.begin(), v.end(), skew == 1 ? 0 : -1);
          Mirror ids = mirror_ids(v, {tokens, k});
          Mirror sorted = poisoned_pair({tokens * k}, DType::i32), pos = poisoned_pair({tokens * k}, DType::i32);
          Mirror offsets = poisoned_pair({experts + 1}, DType::i32);
          ops::moe_sort_by_expert(ids.cpu, experts, sorted.cpu, pos.cpu, offsets.cpu);
          ops::moe_sort_by_expert(ids.gpu, experts, sorted.gpu, pos.gpu, offsets.gpu);
          require_equal(offsets.gpu, offsets.cpu, "offsets");
          require_equal(sorted.gpu, sorted.cpu, "sorted_tokens (rows past offsets[E] are -1 on both)");
          require_equal(pos.gpu, pos.cpu, "slot_pos");
          REQUIRE(ops::counts_from_offsets(offsets.gpu) == ops::moe_sort_by_expert(ids.cpu, experts, sorted.cpu,
                                                                                   pos.cpu));
        }
      }
    }
  }
}

// Exact comparison of moved rows (bf16 on the GPU holds the CPU's f32 values exactly); a NaN
// (a row left poisoned) never compares equal.
void require_same_rows(const Tensor& got, const Tensor& ref, int64_t dim, const std::string& what) {
  const std::vector<float> g = got.to_vector<float>(), r = ref.to_vector<float>();
  REQUIRE(g.size() == r.size());
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(g[i] == r[i])) {
      FAIL(what << ": row " << static_cast<int64_t>(i) / dim << " column " << static_cast<int64_t>(i) % dim << " got "
                << g[i] << " ref " << r[i]);
    }
  }
}

// The sort with its rows moved, on both backends from the same inputs: every output exact.
void check_permute_rows(const std::vector<int32_t>& ids_values, int64_t tokens, int64_t k, int64_t experts, int64_t dim,
                        int64_t rows, DType dtype, uint64_t seed) {
  const int64_t slots = tokens * k;
  Mirror ids = mirror_ids(ids_values, {tokens, k});
  Mirror x = random_mirror({tokens, dim}, dtype, seed, -4.0, 4.0);
  Mirror sorted = poisoned_pair({slots}, DType::i32), pos = poisoned_pair({slots}, DType::i32);
  Mirror offsets = poisoned_pair({experts + 1}, DType::i32), x_sorted = poisoned_pair({rows, dim}, dtype);
  ops::moe_permute_rows(ids.cpu, x.cpu, experts, sorted.cpu, pos.cpu, offsets.cpu, x_sorted.cpu);
  ops::moe_permute_rows(ids.gpu, x.gpu, experts, sorted.gpu, pos.gpu, offsets.gpu, x_sorted.gpu);
  require_equal(offsets.gpu, offsets.cpu, "offsets");
  require_equal(sorted.gpu, sorted.cpu, "sorted_tokens");
  require_equal(pos.gpu, pos.cpu, "slot_pos");
  require_same_rows(x_sorted.gpu, x_sorted.cpu, dim, "x_sorted (padding rows zero on both)");
}

TEST_CASE("cuda moe_permute_rows matches the CPU sort and gather exactly: skewed loads, chunk edges, padding",
          "[cuda][permute]") {
  // Slot counts around the 256-slot chunks: 1, 43*6 = 258, 171*6 = 1026, 256 and 257 (k 1), 2731*6 = 16386.
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (int64_t dim : {768, 37, 4, 6}) {  // 16-byte words, then 2/8 (bf16) or 4/8 (f32) byte words
      for (int64_t k : {1, 6}) {
        for (int64_t tokens : {1, 43, 171, 256, 257, 2731}) {
          for (int pattern = 0; pattern < 4; ++pattern) {  // random with drops; odd experts; all to one; all dropped
            const int64_t experts = pattern == 1 ? 8 : (tokens % 3 == 0 ? 300 : 64);
            const int64_t slots = tokens * k;
            const uint64_t seed = seed_of(41, {static_cast<int64_t>(dtype), dim, k, tokens, pattern});
            std::vector<int32_t> v = ids_with_drops(slots, experts, seed);
            for (int32_t& id : v) {
              if (pattern == 1) id = id < 0 ? id : id | 1;
              if (pattern == 2) id = static_cast<int32_t>(experts - 1);
              if (pattern == 3) id = -1;
            }
            // every slot (dropless), and a capacity-like bound (may cut routed rows when skewed)
            for (int64_t rows : {slots, slots * 3 / 4}) {
              INFO(dtype_name(dtype) << " dim " << dim << " k " << k << " tokens " << tokens << " pattern " << pattern
                                     << " experts " << experts << " rows " << rows);
              check_permute_rows(v, tokens, k, experts, dim, rows, dtype, seed + 1);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("cuda moe_permute_rows at MoE-small's shape, past one block per chunk, on a misaligned row view",
          "[cuda][permute]") {
  const int64_t tokens = 16384, k = 6, experts = 64;
  check_permute_rows(ids_with_drops(tokens * k, experts, 42), tokens, k, experts, 768, tokens * k, DType::bf16, 43);
  // 360,000 slots make 1407 chunks: more than 8 blocks per multiprocessor, so one block per chunk.
  check_permute_rows(ids_with_drops(60000 * k, experts, 46), 60000, k, experts, 64, 60000 * k, DType::bf16, 47);
  // Rows of x starting 2 bytes past a 16-byte boundary take the narrow copy words.
  Mirror ids = mirror_ids(random_int_values(19 * 2, 4, 44), {19, 2});
  Mirror x = random_mirror({20, 8}, DType::bf16, 45);
  Tensor x_cpu = x.cpu.view({160}).rows(1, 153).view({19, 8}), x_gpu = x.gpu.view({160}).rows(1, 153).view({19, 8});
  Mirror sorted = poisoned_pair({38}, DType::i32), pos = poisoned_pair({38}, DType::i32);
  Mirror offsets = poisoned_pair({5}, DType::i32), x_sorted = poisoned_pair({38, 8}, DType::bf16);
  ops::moe_permute_rows(ids.cpu, x_cpu, 4, sorted.cpu, pos.cpu, offsets.cpu, x_sorted.cpu);
  ops::moe_permute_rows(ids.gpu, x_gpu, 4, sorted.gpu, pos.gpu, offsets.gpu, x_sorted.gpu);
  require_equal(sorted.gpu, sorted.cpu, "sorted_tokens");
  require_same_rows(x_sorted.gpu, x_sorted.cpu, 8, "x_sorted from a misaligned view");
}

TEST_CASE("cuda moe_permute_rows gives an id out of range no row, unreported, like the offsets sort",
          "[cuda][permute]") {
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{0, 7, 1, -1, 3, 1}, {3, 2}, DType::i32, gpu());
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2}, DType::f32, gpu());
  Tensor sorted = Tensor::empty({6}, DType::i32, gpu()), pos = Tensor::empty({6}, DType::i32, gpu());
  Tensor offsets = Tensor::empty({5}, DType::i32, gpu());
  Tensor x_sorted = poisoned_on({6, 2}, DType::f32, gpu());
  ops::moe_permute_rows(ids, x, 4, sorted, pos, offsets, x_sorted);
  CHECK(offsets.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 3, 3, 4});
  CHECK(sorted.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2, 2, -1, -1});
  CHECK(pos.to_vector<int32_t>() == std::vector<int32_t>{0, -1, 1, -1, 3, 2});
  CHECK(x_sorted.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6, 5, 6, 0, 0, 0, 0});
}

TEST_CASE("cuda un-permute sum matches the CPU, dropped slots adding nothing", "[cuda][permute]") {
  for (int64_t dim : {1, 37, 64}) {
    for (int64_t k : {1, 6}) {
      for (int64_t tokens : {1, 19, 989}) {
        INFO("dim " << dim << " k " << k << " tokens " << tokens);
        const uint64_t seed = seed_of(39, {dim, k, tokens});
        Mirror ids = mirror_ids(ids_with_drops(tokens * k, 8, seed), {tokens, k});
        Mirror sorted = poisoned_pair({tokens * k}, DType::i32), pos = poisoned_pair({tokens * k}, DType::i32);
        Mirror offsets = poisoned_pair({9}, DType::i32);
        ops::moe_sort_by_expert(ids.cpu, 8, sorted.cpu, pos.cpu, offsets.cpu);
        ops::moe_sort_by_expert(ids.gpu, 8, sorted.gpu, pos.gpu, offsets.gpu);
        Mirror rows = random_mirror({tokens * k, dim}, DType::bf16, seed + 1);
        Mirror out = poisoned_pair({tokens, dim}, DType::bf16);
        ops::moe_unpermute_sum(rows.cpu, pos.cpu, out.cpu);
        ops::moe_unpermute_sum(rows.gpu, pos.gpu, out.gpu);
        require_match(out, bf16_tol(), "un-permuted sum");
        // With an addend (the shared experts' input gradient): a token whose slots were all
        // dropped gets the addend alone.
        Mirror add = random_mirror({tokens, dim}, DType::bf16, seed + 2, -2.0, 2.0);
        Mirror with_add = poisoned_pair({tokens, dim}, DType::bf16);
        ops::moe_unpermute_sum(rows.cpu, pos.cpu, with_add.cpu, add.cpu);
        ops::moe_unpermute_sum(rows.gpu, pos.gpu, with_add.gpu, add.gpu);
        require_match(with_add, bf16_tol(), "un-permuted sum + addend");
        if (dim == 64 && tokens > 1) {  // an addend 16-byte misaligned: the scalar path
          Mirror wide = random_mirror({tokens * dim + 1}, DType::bf16, seed + 3);
          const Tensor shifted_cpu = wide.cpu.view({tokens * dim + 1}).rows(1, tokens * dim + 1).view({tokens, dim});
          const Tensor shifted_gpu = wide.gpu.view({tokens * dim + 1}).rows(1, tokens * dim + 1).view({tokens, dim});
          ops::moe_unpermute_sum(rows.cpu, pos.cpu, with_add.cpu, shifted_cpu);
          ops::moe_unpermute_sum(rows.gpu, pos.gpu, with_add.gpu, shifted_gpu);
          require_match(with_add, bf16_tol(), "un-permuted sum + misaligned addend");
        }
      }
    }
  }
}

TEST_CASE("cuda Switch balance from device sums matches the CPU, skewed and empty experts", "[cuda][router]") {
  for (int64_t experts : {1, 8, 64, 300}) {
    for (int64_t k : {1, 6}) {
      for (int64_t tokens : {1, 989}) {
        for (int skew = 0; skew < 3; ++skew) {
          INFO("experts " << experts << " k " << k << " tokens " << tokens << " skew " << skew);
          const uint64_t seed = seed_of(40, {experts, k, tokens});
          std::vector<int32_t> v = ids_with_drops(tokens * k, experts, seed);
          if (skew > 0) std::fill(v.begin(), v.end(), skew == 1 ? experts - 1 : -1);
          Mirror ids = mirror_ids(v, {tokens, k});
          Mirror sums = random_mirror({experts}, DType::f32, seed + 1, 0.0, 50.0);
          Mirror value{Tensor::zeros({1}, DType::f64), Tensor::zeros({1}, DType::f64, gpu())};
          Mirror row = poisoned_pair({experts}, DType::f32);
          ops::switch_balance(sums.cpu, ids.cpu, 0.01, value.cpu, row.cpu);
          ops::switch_balance(sums.gpu, ids.gpu, 0.01, value.gpu, row.gpu);
          REQUIRE(std::abs(value.gpu.to_vector<double>()[0] - value.cpu.to_vector<double>()[0]) <=
                  1e-6 * std::max(1.0, std::abs(value.cpu.to_vector<double>()[0])));
          require_match(row, accum_tol(), "Switch gradient row");
        }
      }
    }
  }
}

TEST_CASE("cuda moe_combine with dropped slots matches the CPU, spare rows zero", "[cuda][permute]") {
  for (int64_t dim : {1, 37, 64}) {
    for (int64_t k : {1, 2, 6}) {
      for (int64_t tokens : {1, 7, 19, 989}) {
        for (int64_t spare : {0, 3}) {
          INFO("dim " << dim << " k " << k << " tokens " << tokens << " spare rows " << spare);
          const uint64_t seed = seed_of(38, {dim, k, tokens, spare});
          const SortedWithDrops sorted = sort_with_drops(tokens, k, 8, seed);
          const int64_t used = sorted.used;
          const Mirror& slot_pos = sorted.slot_pos;
          // Fewer rows than slots when any slot is dropped (at least one row to allocate).
          const int64_t rows = std::max<int64_t>(used + spare, 1);
          Mirror y = random_mirror({rows, dim}, DType::bf16, seed + 1);
          Mirror weights = random_mirror({tokens, k}, DType::f32, seed + 2, 0.0, 1.0);
          Mirror out = poisoned_pair({tokens, dim}, DType::bf16);
          ops::moe_combine_forward(y.cpu, slot_pos.cpu, weights.cpu, out.cpu);
          ops::moe_combine_forward(y.gpu, slot_pos.gpu, weights.gpu, out.gpu);
          require_match(out, bf16_tol(), "combine out");

          Mirror dout = random_mirror({tokens, dim}, DType::bf16, seed + 3);
          Mirror dy = poisoned_pair({rows, dim}, DType::bf16);
          Mirror dweights = poisoned_pair({tokens, k}, DType::f32);
          ops::moe_combine_backward(y.cpu, slot_pos.cpu, weights.cpu, dout.cpu, dy.cpu, dweights.cpu);
          ops::moe_combine_backward(y.gpu, slot_pos.gpu, weights.gpu, dout.gpu, dy.gpu, dweights.gpu);
          require_match(dy, bf16_tol(), "combine dy_sorted");
          require_match(dweights, accum_tol(), "combine dweights");
          auto spare_rows = dy.gpu.rows(used, rows).to_vector<float>();
          REQUIRE(std::all_of(spare_rows.begin(), spare_rows.end(), [](float v) { return v == 0.0f; }));

          // Without the weights: the spare rows and their weights zero too; dropped slots get 0 back.
          Mirror dy_plain = poisoned_pair({rows, dim}, DType::bf16), row_w = poisoned_pair({rows}, DType::f32);
          ops::moe_combine_backward_unweighted(slot_pos.cpu, weights.cpu, dout.cpu, dy_plain.cpu, row_w.cpu);
          ops::moe_combine_backward_unweighted(slot_pos.gpu, weights.gpu, dout.gpu, dy_plain.gpu, row_w.gpu);
          require_match(dy_plain, bf16_tol(), "unweighted combine dy_sorted");
          require_match(row_w, accum_tol(), "unweighted combine row weights");
          Mirror row_values = random_mirror({rows}, DType::f32, seed + 4);
          Mirror slots = poisoned_pair({tokens, k}, DType::f32);
          ops::moe_gather_slots(row_values.cpu, slot_pos.cpu, slots.cpu);
          ops::moe_gather_slots(row_values.gpu, slot_pos.gpu, slots.gpu);
          require_match(slots, accum_tol(), "gathered slots");
        }
      }
    }
  }
}

TEST_CASE("cuda moe_scatter_rows equals the gather by sorted tokens, with drops, spare rows and long rows",
          "[cuda][permute]") {
  // Rows of 1032 bf16 are 129 16-byte words: more than one batch of four words a lane, and a tail.
  for (auto [dim, dt] : {std::pair{int64_t{1}, DType::bf16}, {37, DType::bf16}, {1024, DType::bf16},
                         {1032, DType::bf16}, {999, DType::f32}}) {
    for (int64_t k : {1, 6, 40}) {  // 40: more slots than lanes (expert choice dispatches k = E)
      for (int64_t tokens : {1, 19, 989}) {
        INFO("dim " << dim << " " << dtype_name(dt) << " k " << k << " tokens " << tokens);
        const uint64_t seed = seed_of(39, {dim, k, tokens});
        const SortedWithDrops sorted = sort_with_drops(tokens, k, 8, seed);
        const Mirror& slot_pos = sorted.slot_pos;
        const int64_t rows = sorted.used + 3;  // three spare rows: zero, as the gather of token -1 gives
        Mirror x = random_mirror({tokens, dim}, dt, seed + 1);
        Mirror scattered = poisoned_pair({rows, dim}, dt);
        ops::moe_scatter_rows(x.cpu, slot_pos.cpu, scattered.cpu);
        ops::moe_scatter_rows(x.gpu, slot_pos.gpu, scattered.gpu);
        // The gather's index: sorted_tokens, then -1 (zeros) for the spare rows.
        std::vector<int32_t> index = sorted.sorted_tokens.to_vector<int32_t>();
        index.resize(static_cast<size_t>(rows), -1);
        Tensor gathered = poisoned_on({rows, dim}, dt, gpu());
        ops::gather_rows(x.gpu, Tensor::from_vector(index, {rows}, DType::i32, gpu()), gathered);
        REQUIRE(scattered.gpu.to_vector<float>() == gathered.to_vector<float>());
        require_match(scattered, bf16_tol(), "scattered rows");
        if (dt != DType::bf16) continue;
        // The unweighted combine backward moves rows the same way, with the slot weights per row.
        Mirror weights = random_mirror({tokens, k}, DType::f32, seed + 2, 0.0, 1.0);
        Mirror dy = poisoned_pair({rows, dim}, DType::bf16), row_w = poisoned_pair({rows}, DType::f32);
        ops::moe_combine_backward_unweighted(slot_pos.cpu, weights.cpu, x.cpu, dy.cpu, row_w.cpu);
        ops::moe_combine_backward_unweighted(slot_pos.gpu, weights.gpu, x.gpu, dy.gpu, row_w.gpu);
        REQUIRE(dy.gpu.to_vector<float>() == gathered.to_vector<float>());
        require_match(row_w, accum_tol(), "unweighted combine row weights");
      }
    }
  }
}

TEST_CASE("cuda dispatch then combine with weights 1/k returns the input", "[cuda][permute]") {
  const int64_t tokens = 989, k = 2, experts = 16, dim = 64;
  Tensor ids = Tensor::from_vector(random_int_values(tokens * k, experts, 35), {tokens, k}, DType::i32, gpu());
  // Distinct experts per token are not required by the sort; the round trip holds regardless.
  Tensor sorted = Tensor::empty({tokens * k}, DType::i32, gpu()), pos = Tensor::empty({tokens * k}, DType::i32, gpu());
  ops::moe_sort_by_expert(ids, experts, sorted, pos);
  Mirror x = random_mirror({tokens, dim}, DType::bf16, 36);
  Tensor y_sorted = poisoned_on({tokens * k, dim}, DType::bf16, gpu());
  ops::gather_rows(x.gpu, sorted, y_sorted);
  Tensor half = Tensor::from_vector(std::vector<float>(static_cast<size_t>(tokens * k), 0.5f), {tokens, k},
                                    DType::f32, gpu());
  Tensor out = poisoned_on({tokens, dim}, DType::bf16, gpu());
  ops::moe_combine_forward(y_sorted, pos, half, out);
  require_close(out, x.cpu, 0, 0, "round trip");
}

}  // namespace
}  // namespace moe::test

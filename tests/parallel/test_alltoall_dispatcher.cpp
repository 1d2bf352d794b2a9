// AllToAllDispatcher on CPU ranks under mpirun (2 and 4 ranks, and one process; NCCL on one GPU
// per rank when built with MOE_TEST_NCCL): payloads tagged (rank, token) reach the experts the
// router chose and return to their slot; every phase and its backward equal the LocalDispatcher
// over the concatenation of the EP group's tokens; f64 central differences across ranks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "parallel/alltoall_dispatcher.h"
#include "parallel/communicator.h"
#include "parallel/local_dispatcher.h"
#include "parallel/mpi_env.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

// The device whose tensors the tested backend moves: the CPU (MPI) or this rank's GPU (NCCL).
Device test_device() {
#if MOE_TEST_NCCL
  static const Device device = Device::cuda(MpiEnv().local_rank() % cuda_device_count());
  return device;
#else
  return Device::cpu();
#endif
}

std::unique_ptr<Communicator> world() { return make_world_communicator(test_device()); }

// Activations and combine weights: f64 on the CPU (exact references); bf16 activations with f32
// weights on CUDA, the only combine the CUDA backend has.
DType data_dtype() { return test_device().is_cuda() ? DType::bf16 : DType::f64; }
DType weight_dtype(DType data) { return data == DType::bf16 ? DType::f32 : data; }

Tensor make(const std::vector<double>& values, const Shape& shape, DType dtype) {
  if (dtype == DType::f64) return Tensor::from_vector(values, shape, dtype, test_device());
  std::vector<float> f(values.begin(), values.end());
  return Tensor::from_vector(f, shape, dtype, test_device());
}

Tensor make_ids(const std::vector<int32_t>& ids, int64_t tokens, int64_t k) {
  return Tensor::from_vector(ids, {tokens, k}, DType::i32, test_device());
}

// A routing scenario the EP group agrees on. Each rank's inputs are rebuilt anywhere from
// (scenario, ep, rank, seed), so every rank can run the single-rank reference over all tokens.
struct Scenario {
  const char* name;
  int64_t experts_per_rank, k, d;
  int64_t base_tokens, tokens_step;  // rank q has base + step * q tokens
  int empty_rank = -1;               // ... except this one, which has none
  bool drop = false;                 // slots with (t*k + s + q) % 4 == 1 are dropped (id -1)
  int all_dropped_rank = -1;         // every slot of this rank is dropped
  bool starve_expert = false;        // no token chooses local expert 1 of EP rank 0
  bool starve_last_rank = false;     // no token chooses the last EP rank's experts (ep > 1)
};

const Scenario k_scenarios[] = {
    {"3 experts per rank, top-2, dropped slots, a starved middle expert, uneven tokens", 3, 2, 5, 5, 3, -1, true, -1,
     true, false},
    {"3 experts per rank, top-3, rank 1 without tokens, nothing for the last rank", 3, 3, 4, 7, 1, 1, true, -1, false,
     true},
    {"1 expert per rank, top-1 (received rows need no regrouping)", 1, 1, 3, 4, 2},
    {"4 experts per rank, top-2, every slot of rank 0 dropped", 4, 2, 6, 6, 0, -1, false, 0},
};

struct RankInput {
  int64_t tokens = 0;
  std::vector<int32_t> ids;              // [T*k]
  std::vector<double> x, weights, dout;  // random [T,d], [T,k], [T,d]
};

int64_t tokens_of(const Scenario& s, int q) { return q == s.empty_rank ? 0 : s.base_tokens + s.tokens_step * q; }

RankInput make_input(const Scenario& s, int ep, int q, uint64_t seed) {
  const int64_t num_experts = s.experts_per_rank * ep;
  std::vector<int32_t> allowed;
  for (int64_t e = 0; e < num_experts; ++e) {
    bool starved =
        (s.starve_expert && e == 1) || (s.starve_last_rank && ep > 1 && e >= num_experts - s.experts_per_rank);
    if (!starved) allowed.push_back(static_cast<int32_t>(e));
  }
  REQUIRE(static_cast<int64_t>(allowed.size()) >= s.k);
  RankInput in;
  in.tokens = tokens_of(s, q);
  std::mt19937_64 rng(seed * 1000 + static_cast<uint64_t>(q));
  for (int64_t t = 0; t < in.tokens; ++t) {
    std::shuffle(allowed.begin(), allowed.end(), rng);  // k distinct experts per token
    for (int64_t slot = 0; slot < s.k; ++slot) {
      bool dropped = q == s.all_dropped_rank || (s.drop && (t * s.k + slot + q) % 4 == 1);
      in.ids.push_back(dropped ? -1 : allowed[static_cast<size_t>(slot)]);
    }
  }
  uint64_t base = seed * 7919 + static_cast<uint64_t>(q) * 31;
  in.x = test::random_values(in.tokens * s.d, base + 1);
  in.weights = test::random_values(in.tokens * s.k, base + 2, 0.2, 1.0);  // dropped slots keep a weight
  in.dout = test::random_values(in.tokens * s.d, base + 3);
  return in;
}

RankInput concat(const std::vector<RankInput>& inputs) {
  RankInput all;
  for (const RankInput& in : inputs) {
    all.tokens += in.tokens;
    all.ids.insert(all.ids.end(), in.ids.begin(), in.ids.end());
    all.x.insert(all.x.end(), in.x.begin(), in.x.end());
    all.weights.insert(all.weights.end(), in.weights.begin(), in.weights.end());
    all.dout.insert(all.dout.end(), in.dout.begin(), in.dout.end());
  }
  return all;
}

// Stand-in experts: expert e maps a row to x * scale(e, c) + shift(e, c) (backward: dy * scale),
// so a row reaching the wrong expert or column changes the answer. Dyadic values: exact in bf16.
double expert_scale(int64_t e, int64_t c) { return 0.5 + 0.25 * static_cast<double>((e * 3 + c) % 5); }
double expert_shift(int64_t e, int64_t c) { return 0.125 * static_cast<double>((e + 2 * c) % 7) - 0.375; }

Tensor run_experts(const Tensor& rows, const std::vector<int64_t>& counts, int64_t first_expert, bool backward) {
  REQUIRE(rows.ndim() == 2);
  REQUIRE(std::accumulate(counts.begin(), counts.end(), int64_t{0}) <= rows.size(0));  // the rest: padding
  const int64_t d = rows.size(1);
  auto v = rows.to_vector<double>();
  int64_t row = 0;
  for (size_t j = 0; j < counts.size(); ++j) {
    const int64_t e = first_expert + static_cast<int64_t>(j);
    for (int64_t i = 0; i < counts[j]; ++i, ++row)
      for (int64_t c = 0; c < d; ++c) {
        double& value = v[static_cast<size_t>(row * d + c)];
        value = value * expert_scale(e, c) + (backward ? 0.0 : expert_shift(e, c));
      }
  }
  return make(v, rows.shape(), rows.dtype());
}

std::vector<double> rows_of(const Tensor& t, int64_t begin, int64_t end) {
  return t.rows(begin, end).to_vector<double>();
}

// test::require_close reads the worst element, so empty sides (a rank without tokens or rows)
// are compared by size alone.
void require_close(const std::vector<double>& got, const std::vector<double>& ref, const test::Tolerance& tol,
                   const std::string& what) {
  REQUIRE(got.size() == ref.size());
  if (!ref.empty()) test::require_close(got, ref, tol.atol, tol.rtol, what);
}

std::vector<int64_t> count_ids(const std::vector<int32_t>& ids, int64_t num_experts) {
  std::vector<int64_t> counts(static_cast<size_t>(num_experts), 0);
  for (int32_t id : ids)
    if (id >= 0) ++counts[static_cast<size_t>(id)];
  return counts;
}

// Every phase on this rank against the LocalDispatcher over the group's concatenated tokens.
// Within a local expert the rows come in (source rank, token, slot) order, which is exactly the
// single-rank sort of the concatenation: the rows match the reference's block of those experts.
void check_against_local(Communicator& group, const Scenario& s, uint64_t seed) {
  INFO(s.name << " (EP group of " << group.size() << ", rank " << group.rank() << ")");
  const int ep = group.size(), me = group.rank();
  const int64_t num_experts = s.experts_per_rank * ep, d = s.d, k = s.k;
  const DType dtype = data_dtype(), wdtype = weight_dtype(dtype);
  const auto tol = test::tolerance_for(dtype);
  AllToAllDispatcher dispatcher(num_experts, group);
  REQUIRE(dispatcher.num_experts() == num_experts);
  REQUIRE(dispatcher.num_local_experts() == s.experts_per_rank);
  const int64_t first = dispatcher.first_expert();
  REQUIRE(first == me * s.experts_per_rank);

  std::vector<RankInput> inputs;
  for (int q = 0; q < ep; ++q) inputs.push_back(make_input(s, ep, q, seed));
  const RankInput all = concat(inputs);
  const RankInput& mine = inputs[static_cast<size_t>(me)];
  int64_t offset = 0;  // this rank's first token in the concatenation
  for (int q = 0; q < me; ++q) offset += inputs[static_cast<size_t>(q)].tokens;

  // The reference: one rank holding every token and every expert.
  LocalDispatcher local(num_experts);
  DispatchSaved ref;
  Tensor ref_w = make(all.weights, {all.tokens, k}, wdtype), ref_dout = make(all.dout, {all.tokens, d}, dtype);
  Tensor ref_sorted = local.dispatch(make(all.x, {all.tokens, d}, dtype), make_ids(all.ids, all.tokens, k), ref);
  const std::vector<int64_t> ref_counts = ref.host_routed_counts();  // rows past their sum are padding
  Tensor ref_y = run_experts(ref_sorted, ref_counts, 0, false);
  Tensor ref_out = local.combine(ref, ref_y, ref_w);
  Tensor ref_dy, ref_dw;
  local.combine_backward(ref, ref_y, ref_w, ref_dout, ref_dy, ref_dw);
  Tensor ref_dx = local.dispatch_backward(ref, run_experts(ref_dy, ref_counts, 0, true), Tensor());

  Tensor x = make(mine.x, {mine.tokens, d}, dtype), w = make(mine.weights, {mine.tokens, k}, wdtype);
  DispatchSaved saved;
  Tensor x_local = dispatcher.dispatch(x, make_ids(mine.ids, mine.tokens, k), saved);
  // Counts: this rank's routing per global expert, and what its experts receive.
  REQUIRE(saved.routed_counts == count_ids(mine.ids, num_experts));
  const std::vector<int64_t> expected_counts(ref_counts.begin() + first,
                                             ref_counts.begin() + first + s.experts_per_rank);
  REQUIRE(saved.counts == expected_counts);
  const int64_t begin = std::accumulate(ref_counts.begin(), ref_counts.begin() + first, int64_t{0});
  const int64_t end = begin + std::accumulate(expected_counts.begin(), expected_counts.end(), int64_t{0});
  REQUIRE(x_local.shape() == Shape{end - begin, d});
  REQUIRE(x_local.to_vector<double>() == rows_of(ref_sorted, begin, end));  // moved, never computed: exact

  Tensor y_local = run_experts(x_local, saved.counts, first, false);
  Tensor out = dispatcher.combine(saved, y_local, w);
  REQUIRE(out.shape() == Shape{mine.tokens, d});
  require_close(out.to_vector<double>(), rows_of(ref_out, offset, offset + mine.tokens), tol, "combine");

  Tensor dout = make(mine.dout, {mine.tokens, d}, dtype), dy_local, dw;
  dispatcher.combine_backward(saved, y_local, w, dout, dy_local, dw);
  require_close(dy_local.to_vector<double>(), rows_of(ref_dy, begin, end), tol, "dy_local");
  require_close(dw.to_vector<double>(), rows_of(ref_dw, offset, offset + mine.tokens), tol, "dweights");
  auto dw_values = dw.to_vector<double>();
  for (size_t i = 0; i < mine.ids.size(); ++i)
    if (mine.ids[i] < 0) REQUIRE(dw_values[i] == 0.0);

  Tensor dx = dispatcher.dispatch_backward(saved, run_experts(dy_local, saved.counts, first, true), Tensor());
  REQUIRE(dx.shape() == Shape{mine.tokens, d});
  require_close(dx.to_vector<double>(), rows_of(ref_dx, offset, offset + mine.tokens), tol, "dx");

  // A caller that dropped the kept rows: combine_backward sends y_local back again.
  DispatchSaved lean = saved;
  lean.combine_rows = Tensor();
  Tensor dy_again, dw_again;
  dispatcher.combine_backward(lean, y_local, w, dout, dy_again, dw_again);
  REQUIRE(dy_again.to_vector<double>() == dy_local.to_vector<double>());
  REQUIRE(dw_again.to_vector<double>() == dw_values);
}

// The payload of token t of EP rank q, column c: (q, t, small integers), exact in bf16.
double payload(int64_t q, int64_t t, int64_t c) {
  return c == 0   ? static_cast<double>(q)
         : c == 1 ? static_cast<double>(t)
                  : static_cast<double>((q * 7 + t * 3 + c) % 11 - 5);
}

// The receiving side: each local expert got exactly the rows whose slots chose it, from every
// rank of the group, in (source rank, token, slot) order; saved.counts says as much.
void check_received(const Tensor& x_local, const DispatchSaved& saved, const std::vector<RankInput>& inputs,
                    int64_t first, int64_t num_local, int64_t k) {
  const int64_t d = x_local.size(1);
  auto got = x_local.to_vector<double>();
  int64_t row = 0;
  for (int64_t j = 0; j < num_local; ++j) {
    const int64_t e = first + j;
    int64_t expected_rows = 0;
    for (size_t q = 0; q < inputs.size(); ++q) {
      const RankInput& in = inputs[q];
      for (int64_t t = 0; t < in.tokens; ++t)
        for (int64_t slot = 0; slot < k; ++slot) {
          if (in.ids[static_cast<size_t>(t * k + slot)] != e) continue;
          ++expected_rows;
          INFO("expert " << e << " row " << row << ": expected token " << t << " of rank " << q);
          REQUIRE(row < x_local.size(0));
          for (int64_t c = 0; c < d; ++c)
            REQUIRE(got[static_cast<size_t>(row * d + c)] == payload(static_cast<int64_t>(q), t, c));
          ++row;
        }
    }
    REQUIRE(saved.counts[static_cast<size_t>(j)] == expected_rows);
  }
  REQUIRE(row == x_local.size(0));
}

// Payloads tagged (rank, token) reach the experts they chose (checked where they arrive); the
// outputs, tagged with the expert, must come back to their slot.
void check_payload(Communicator& group, const Scenario& s, uint64_t seed, DType dtype) {
  INFO(s.name << " (EP group of " << group.size() << ", rank " << group.rank() << ", " << dtype_name(dtype) << ")");
  const int ep = group.size(), me = group.rank();
  const int64_t num_experts = s.experts_per_rank * ep, d = s.d, k = s.k;
  REQUIRE(d >= 3);
  const DType wdtype = weight_dtype(dtype);
  AllToAllDispatcher dispatcher(num_experts, group);
  const int64_t first = dispatcher.first_expert(), num_local = dispatcher.num_local_experts();
  std::vector<RankInput> inputs;
  for (int q = 0; q < ep; ++q) inputs.push_back(make_input(s, ep, q, seed));
  const RankInput& mine = inputs[static_cast<size_t>(me)];
  const int64_t tokens = mine.tokens;
  std::vector<double> xv(static_cast<size_t>(tokens * d));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < d; ++c) xv[static_cast<size_t>(t * d + c)] = payload(me, t, c);
  Tensor x = make(xv, {tokens, d}, dtype), ids = make_ids(mine.ids, tokens, k);

  DispatchSaved saved;
  Tensor x_local = dispatcher.dispatch(x, ids, saved);
  REQUIRE(x_local.dtype() == dtype);
  check_received(x_local, saved, inputs, first, num_local, k);

  // Identity experts that overwrite the last column with their id: with one-hot weights on
  // slot s, token t gets back its own payload tagged with ids[t,s] (zeros if s was dropped).
  std::vector<double> tagged = x_local.to_vector<double>();
  int64_t row = 0;
  for (int64_t j = 0; j < num_local; ++j)
    for (int64_t i = 0; i < saved.counts[static_cast<size_t>(j)]; ++i, ++row)
      tagged[static_cast<size_t>(row * d + d - 1)] = static_cast<double>(first + j);
  Tensor y_local = make(tagged, x_local.shape(), dtype);
  for (int64_t slot = 0; slot < k; ++slot) {
    std::vector<double> onehot(static_cast<size_t>(tokens * k), 0.0);
    for (int64_t t = 0; t < tokens; ++t) onehot[static_cast<size_t>(t * k + slot)] = 1.0;
    auto out = dispatcher.combine(saved, y_local, make(onehot, {tokens, k}, wdtype)).to_vector<double>();
    for (int64_t t = 0; t < tokens; ++t) {
      const int32_t id = mine.ids[static_cast<size_t>(t * k + slot)];
      INFO("token " << t << " slot " << slot << " expert " << id);
      for (int64_t c = 0; c < d; ++c) {
        double expected = id < 0 ? 0.0 : c == d - 1 ? static_cast<double>(id) : payload(me, t, c);
        REQUIRE(out[static_cast<size_t>(t * d + c)] == expected);
      }
    }
  }

  // Unit weights and identity experts: combine returns the input once per kept slot, and the
  // backward of both phases returns the gradient the same way.
  std::vector<double> ones(static_cast<size_t>(tokens * k), 1.0);
  Tensor unit = make(ones, {tokens, k}, wdtype);
  auto out = dispatcher.combine(saved, x_local, unit).to_vector<double>();
  std::vector<double> dout_values(static_cast<size_t>(tokens * d));
  for (size_t i = 0; i < dout_values.size(); ++i) dout_values[i] = static_cast<double>(static_cast<int64_t>(i) % 9 - 4);
  Tensor dy_local, dw;
  dispatcher.combine_backward(saved, x_local, unit, make(dout_values, {tokens, d}, dtype), dy_local, dw);
  auto dx = dispatcher.dispatch_backward(saved, dy_local, Tensor()).to_vector<double>();
  for (int64_t t = 0; t < tokens; ++t) {
    int64_t kept = 0;
    for (int64_t slot = 0; slot < k; ++slot) kept += mine.ids[static_cast<size_t>(t * k + slot)] >= 0;
    for (int64_t c = 0; c < d; ++c) {
      const size_t i = static_cast<size_t>(t * d + c);
      REQUIRE(out[i] == static_cast<double>(kept) * xv[i]);
      REQUIRE(dx[i] == static_cast<double>(kept) * dout_values[i]);
    }
  }
}

TEST_CASE("tokens tagged (rank, token) reach the experts they chose and return to their slot", "[parallel]") {
  auto comm = world();
  int index = GENERATE(0, 1, 2, 3);
  check_payload(*comm, k_scenarios[index], 10 + static_cast<uint64_t>(index), data_dtype());
  if (!test_device().is_cuda()) check_payload(*comm, k_scenarios[index], 20 + static_cast<uint64_t>(index), DType::f32);
}

TEST_CASE("all-to-all dispatch and combine, forward and backward, equal the local dispatcher on all tokens",
          "[parallel]") {
  auto comm = world();
  int index = GENERATE(0, 1, 2, 3);
  check_against_local(*comm, k_scenarios[index], 30 + static_cast<uint64_t>(index));
}

TEST_CASE("EP sub-groups from split dispatch within their group", "[parallel]") {
  auto comm = world();
  const int me = comm->rank();
  // Interleaved groups {0, 2, ...} and {1, 3, ...}: group ranks differ from world ranks. On 2
  // ranks each group has one rank (the all-to-all moves rows to itself).
  auto group = comm->split(me % 2, me);
  REQUIRE(group != nullptr);
  int index = GENERATE(0, 1, 3);
  check_payload(*group, k_scenarios[index], 40 + static_cast<uint64_t>(me % 2), data_dtype());
  check_against_local(*group, k_scenarios[index], 50 + static_cast<uint64_t>(me % 2));
}

// Central differences of L = sum over ranks of <dout_q, combine(experts(dispatch(x_q)))>, all
// ranks perturbing one element of one rank at a time in lockstep (every evaluation is collective).
std::vector<double> lockstep_gradient(Communicator& group, Tensor& x, int owner, int64_t owner_numel,
                                      const std::function<double()>& objective) {
  const double eps = 1e-6;
  const bool mine = group.rank() == owner;
  std::vector<double> grad;
  for (int64_t i = 0; i < owner_numel; ++i) {
    double* value = mine ? x.data_as<double>() + i : nullptr;
    const double saved = mine ? *value : 0.0;
    if (mine) *value = saved + eps;
    const double plus = objective();
    if (mine) *value = saved - eps;
    const double minus = objective();
    if (mine) {
      *value = saved;
      grad.push_back((plus - minus) / (2 * eps));
    }
  }
  return grad;
}

TEST_CASE("all-to-all dispatch and combine gradients match central differences across ranks (f64)",
          "[parallel][gradcheck]") {
  if (test_device().is_cuda()) return;  // f64 finite differences are a CPU check
  auto comm = world();
  const Scenario s{"2 experts per rank, top-2, dropped slots", 2, 2, 3, 3, 1, -1, true};
  const int ep = comm->size(), me = comm->rank();
  const int64_t num_experts = s.experts_per_rank * ep;
  AllToAllDispatcher dispatcher(num_experts, *comm);
  const int64_t first = dispatcher.first_expert();
  const RankInput in = make_input(s, ep, me, 60);
  Tensor x = make(in.x, {in.tokens, s.d}, DType::f64), w = make(in.weights, {in.tokens, s.k}, DType::f64);
  Tensor ids = make_ids(in.ids, in.tokens, s.k), dout = make(in.dout, {in.tokens, s.d}, DType::f64);
  auto objective = [&]() {
    DispatchSaved sv;
    Tensor x_local = dispatcher.dispatch(x, ids, sv);
    auto out = dispatcher.combine(sv, run_experts(x_local, sv.counts, first, false), w).to_vector<double>();
    std::vector<double> value{0.0};
    for (size_t i = 0; i < out.size(); ++i) value[0] += out[i] * in.dout[i];
    comm->all_reduce_sum(value);
    return value[0];
  };

  DispatchSaved saved;
  Tensor x_local = dispatcher.dispatch(x, ids, saved);
  Tensor y_local = run_experts(x_local, saved.counts, first, false);
  dispatcher.combine(saved, y_local, w);
  Tensor dy_local, dw;
  dispatcher.combine_backward(saved, y_local, w, dout, dy_local, dw);
  Tensor dx = dispatcher.dispatch_backward(saved, run_experts(dy_local, saved.counts, first, true), Tensor());

  std::vector<double> numeric_dx, numeric_dw;
  for (int q = 0; q < ep; ++q) {
    auto gx = lockstep_gradient(*comm, x, q, tokens_of(s, q) * s.d, objective);
    auto gw = lockstep_gradient(*comm, w, q, tokens_of(s, q) * s.k, objective);
    if (q == me) numeric_dx = gx, numeric_dw = gw;
  }
  double largest = 0;
  for (double g : numeric_dx) largest = std::max(largest, std::abs(g));
  REQUIRE(largest > 1e-2);  // a vanishing gradient would make the comparison vacuous
  test::require_close(dx.to_vector<double>(), numeric_dx, 1e-7, 1e-6, "dx");
  test::require_close(dw.to_vector<double>(), numeric_dw, 1e-7, 1e-6, "dweights");
}

TEST_CASE("all-to-all dispatcher errors name the problem", "[parallel]") {
  auto comm = world();
  const int ep = comm->size();
  const DType dtype = data_dtype();
  REQUIRE_THROWS_WITH(AllToAllDispatcher(0, *comm), Contains("expert count must be positive"));
  if (ep > 1) {
    REQUIRE_THROWS_WITH(AllToAllDispatcher(2 * ep + 1, *comm),
                        Contains("experts cannot be split evenly over an EP group of " + std::to_string(ep)));
  }
  // Every rank fails the same check before any collective, so no rank is left waiting.
  const int64_t num_experts = 2 * ep;
  AllToAllDispatcher dispatcher(num_experts, *comm);
  Tensor x = make(test::random_values(4 * 3, 70), {4, 3}, dtype);
  DispatchSaved saved;
  Tensor short_ids = make_ids({0, 1, 1, 0, 0, 1}, 3, 2);
  REQUIRE_THROWS_WITH(dispatcher.dispatch(x, short_ids, saved), Contains("ids [3,2] must be [T,k] for x [4,3]"));
  Tensor bad_ids = make_ids({0, 1, 1, 0, 0, static_cast<int32_t>(num_experts), 1, 0}, 4, 2);
  REQUIRE_THROWS_WITH(dispatcher.dispatch(x, bad_ids, saved), Contains("outside [0,"));

  Tensor ids = make_ids({0, 1, 1, 0, -1, 1, 0, -1}, 4, 2);
  Tensor x_local = dispatcher.dispatch(x, ids, saved);
  Tensor wrong = make(test::random_values((x_local.size(0) + 1) * 3, 71), {x_local.size(0) + 1, 3}, dtype);
  Tensor w = make(test::random_values(8, 72), {4, 2}, weight_dtype(dtype));
  REQUIRE_THROWS_WITH(dispatcher.combine(saved, wrong, w), Contains("combine: the local rows must have"));
  REQUIRE_THROWS_WITH(dispatcher.dispatch_backward(saved, wrong, Tensor()),
                      Contains("dispatch_backward: the local rows"));

  LocalDispatcher local(num_experts);
  DispatchSaved local_saved;
  Tensor sorted = local.dispatch(x, ids, local_saved);
  REQUIRE_THROWS_WITH(dispatcher.combine(local_saved, sorted, w),
                      Contains("saved does not come from AllToAllDispatcher::dispatch"));
}

}  // namespace
}  // namespace moe

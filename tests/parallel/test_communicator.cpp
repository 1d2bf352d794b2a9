// Communicator collectives (MPI on CPU ranks under mpirun with 2 and 4 ranks and as a single
// process; NCCL on one GPU per rank when built with MOE_TEST_NCCL): payloads encode (source
// rank, index) so each element's arrival place is checked.
#include <catch2/catch.hpp>

#include <cstring>
#include <functional>
#include <numeric>

#include "parallel/communicator.h"
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

Tensor zeros(const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, test_device()); }

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, DType dtype) {
  return Tensor::from_vector(values, shape, dtype, test_device());
}

template <typename T>
Tensor filled(int64_t n, DType dtype, const std::function<T(int64_t)>& value) {
  std::vector<T> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = value(i);
  return from_vector(values, {n}, dtype);
}

// Rows per (source, destination) pair for the all-to-all tests: uneven, with zeros.
int64_t pair_rows(int src, int dst) { return (src + 2 * dst) % 3; }
// The payload of element (row k, column c) sent from src to dst.
int64_t pair_payload(int src, int dst, int64_t k, int64_t c) { return ((src * 64 + dst) * 64 + k) * 8 + c; }

TEST_CASE("world communicator matches the MPI environment", "[parallel]") {
  MpiEnv env;  // MPI is already up (the listener owns it); this one only reads ranks
  auto comm = world();
  REQUIRE(comm->rank() == env.world_rank());
  REQUIRE(comm->size() == env.world_size());
  REQUIRE(comm->device() == test_device());
  // mpirun here starts every rank on this one node.
  REQUIRE(env.local_rank() == env.world_rank());
  REQUIRE(env.local_size() == env.world_size());
}

TEST_CASE("all_reduce_sum sums every dtype elementwise", "[parallel]") {
  auto comm = world();
  int64_t n = 37;
  int64_t s = comm->size(), r = comm->rank();
  int64_t rank_sum = s * (s - 1) / 2;
  // x_r[i] = 1000 r + i  =>  sum = 1000 * sum(r) + s * i, exact in every dtype.
  auto check = [&](DType dtype) {
    INFO(dtype_name(dtype));
    Tensor x = dtype == DType::i32   ? filled<int32_t>(n, dtype, [&](int64_t i) { return 1000 * r + i; })
               : dtype == DType::i64 ? filled<int64_t>(n, dtype, [&](int64_t i) { return 1000 * r + i; })
               : dtype == DType::f64 ? filled<double>(n, dtype, [&](int64_t i) { return 1000.0 * r + i; })
                                     : filled<float>(n, dtype, [&](int64_t i) { return 1000.0f * r + i; });
    comm->all_reduce_sum(x);
    auto got = x.to_vector<double>();
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[i] == static_cast<double>(1000 * rank_sum + s * i));
  };
  check(DType::f32);
  check(DType::f64);
  check(DType::i32);
  check(DType::i64);
}

TEST_CASE("all_reduce_avg averages floating tensors", "[parallel]") {
  auto comm = world();
  int64_t n = 19;
  double s = comm->size();
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    Tensor x = test::random_tensor({n}, dtype, 100 + comm->rank(), test_device());
    comm->all_reduce_avg(x);
    std::vector<double> expected(n, 0.0);
    for (int q = 0; q < comm->size(); ++q) {
      auto v = test::random_values(n, 100 + q);
      for (int64_t i = 0; i < n; ++i) expected[i] += v[i] / s;
    }
    auto tol = test::tolerance_for(dtype);
    test::require_close(x.to_vector<double>(), expected, tol.atol, tol.rtol, "all_reduce_avg");
  }
  Tensor ints = zeros({4}, DType::i32);
  REQUIRE_THROWS_WITH(comm->all_reduce_avg(ints), Contains("all_reduce_avg: ") && Contains("averages"));
}

TEST_CASE("host vectors reduce by sum and max", "[parallel]") {
  auto comm = world();
  double r = comm->rank(), s = comm->size();
  std::vector<double> sums = {r, 2.5 * r + 1, -r};
  comm->all_reduce_sum(sums);
  double rank_sum = s * (s - 1) / 2;
  REQUIRE(sums == std::vector<double>{rank_sum, 2.5 * rank_sum + s, -rank_sum});
  std::vector<double> maxes = {r, -r, r == 0 ? 7.0 : 0.0};
  comm->all_reduce_max(maxes);
  REQUIRE(maxes == std::vector<double>{s - 1, 0.0, 7.0});
}

TEST_CASE("broadcast copies the root's tensor to every rank", "[parallel]") {
  auto comm = world();
  int64_t n = 11;
  for (int root = 0; root < comm->size(); ++root) {
    INFO("root " << root);
    bool is_root = comm->rank() == root;
    Tensor ids = filled<int64_t>(n, DType::i64, [&](int64_t i) { return is_root ? root * 100 + i : -1; });
    comm->broadcast(ids, root);
    auto got = ids.to_vector<int64_t>();
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[i] == root * 100 + i);
    // bf16 moves as raw elements: the bits arrive unchanged.
    Tensor half = filled<float>(n, DType::bf16, [&](int64_t i) { return is_root ? 0.25f * i - root : 99.0f; });
    comm->broadcast(half, root);
    auto values = half.to_vector<float>();
    for (int64_t i = 0; i < n; ++i) REQUIRE(values[i] == 0.25f * i - root);
  }
  Tensor x = zeros({2}, DType::f32);
  REQUIRE_THROWS_WITH(comm->broadcast(x, comm->size()), Contains("broadcast: peer"));
}

TEST_CASE("all_gather places rank r's input at slot r", "[parallel]") {
  auto comm = world();
  int64_t n = 6, s = comm->size(), r = comm->rank();
  Tensor in = filled<int32_t>(n, DType::i32, [&](int64_t i) { return static_cast<int32_t>(1000 * r + i); });
  Tensor out = zeros({s, n}, DType::i32);
  comm->all_gather(in, out);
  auto got = out.to_vector<int32_t>();
  for (int64_t q = 0; q < s; ++q)
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[q * n + i] == 1000 * q + i);

  SECTION("in place, from this rank's slot of the output") {
    Tensor full = zeros({s * n}, DType::f64);
    Tensor slot = full.rows(r * n, (r + 1) * n);
    slot.copy_from(filled<double>(n, DType::f64, [&](int64_t i) { return 0.5 * i + 10.0 * r; }));
    comm->all_gather(slot, full);
    auto all = full.to_vector<double>();
    for (int64_t q = 0; q < s; ++q)
      for (int64_t i = 0; i < n; ++i) REQUIRE(all[q * n + i] == 0.5 * i + 10.0 * q);
  }
  SECTION("a wrongly sized output is an error naming the sizes") {
    Tensor bad = zeros({s * n + 1}, DType::i32);
    REQUIRE_THROWS_WITH(comm->all_gather(in, bad), Contains("all_gather: expected"));
    Tensor wrong_dtype = zeros({s * n}, DType::f32);
    REQUIRE_THROWS_WITH(comm->all_gather(in, wrong_dtype), Contains("all_gather: dtypes differ"));
  }
}

TEST_CASE("reduce_scatter_sum gives rank r the sum of slot r", "[parallel]") {
  auto comm = world();
  int64_t n = 5, s = comm->size(), r = comm->rank();
  int64_t rank_sum = s * (s - 1) / 2;
  // in_q[j] = 10000 q + j  =>  out_r[i] = 10000 * sum(q) + s * (r n + i)
  auto expected = [&](int64_t i) { return 10000 * rank_sum + s * (r * n + i); };
  for (DType dtype : {DType::f64, DType::i32}) {
    INFO(dtype_name(dtype));
    Tensor in = dtype == DType::i32
                    ? filled<int32_t>(s * n, dtype, [&](int64_t j) { return static_cast<int32_t>(10000 * r + j); })
                    : filled<double>(s * n, dtype, [&](int64_t j) { return 10000.0 * r + j; });
    Tensor out = zeros({n}, dtype);
    comm->reduce_scatter_sum(in, out);
    auto got = out.to_vector<double>();
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[i] == static_cast<double>(expected(i)));
  }
  SECTION("in place, into this rank's slot of the input") {
    Tensor full = filled<float>(s * n, DType::f32, [&](int64_t j) { return 10000.0f * r + j; });
    Tensor slot = full.rows(r * n, (r + 1) * n);
    comm->reduce_scatter_sum(full, slot);
    auto got = slot.to_vector<double>();
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[i] == static_cast<double>(expected(i)));
  }
#if MOE_TEST_NCCL
  SECTION("bf16 reduces on the GPU (small integers are exact in bf16)") {
    Tensor in = filled<float>(s * n, DType::bf16, [&](int64_t j) { return static_cast<float>(r + j % 4); });
    Tensor out = zeros({n}, DType::bf16);
    comm->reduce_scatter_sum(in, out);
    auto got = out.to_vector<float>();
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[i] == static_cast<float>(rank_sum + s * ((r * n + i) % 4)));
  }
#else
  SECTION("bf16 cannot be reduced on the CPU") {
    Tensor in = zeros({s * n}, DType::bf16), out = zeros({n}, DType::bf16);
    REQUIRE_THROWS_WITH(comm->reduce_scatter_sum(in, out), Contains("cannot reduce bf16"));
  }
#endif
}

TEST_CASE("all_to_all_v delivers each row from (source, index) to its place", "[parallel]") {
  auto comm = world();
  int s = comm->size(), me = comm->rank();
  int64_t width = 3;
  std::vector<int64_t> send_counts(s);
  for (int d = 0; d < s; ++d) send_counts[d] = pair_rows(me, d);
  std::vector<int64_t> recv_counts = comm->all_to_all_counts(send_counts);
  for (int q = 0; q < s; ++q) REQUIRE(recv_counts[q] == pair_rows(q, me));

  int64_t num_send = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  int64_t num_recv = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  std::vector<int64_t> payload;
  for (int d = 0; d < s; ++d)
    for (int64_t k = 0; k < send_counts[d]; ++k)
      for (int64_t c = 0; c < width; ++c) payload.push_back(pair_payload(me, d, k, c));
  Tensor send = from_vector(payload, {num_send, width}, DType::i64);
  Tensor recv = from_vector(std::vector<int64_t>(num_recv * width, -1), {num_recv, width}, DType::i64);
  comm->all_to_all_v(send, send_counts, recv, recv_counts);

  auto got = recv.to_vector<int64_t>();
  int64_t row = 0;
  for (int q = 0; q < s; ++q)
    for (int64_t k = 0; k < recv_counts[q]; ++k, ++row)
      for (int64_t c = 0; c < width; ++c) REQUIRE(got[row * width + c] == pair_payload(q, me, k, c));

  SECTION("rows of several dims and a float dtype") {
    std::vector<float> values;
    for (int d = 0; d < s; ++d)
      for (int64_t k = 0; k < send_counts[d]; ++k)
        for (int64_t c = 0; c < 4; ++c) values.push_back(static_cast<float>(pair_payload(me, d, k, c)));
    Tensor send4 = from_vector(values, {num_send, 2, 2}, DType::f32);
    Tensor recv4 = zeros({num_recv, 2, 2}, DType::f32);
    comm->all_to_all_v(send4, send_counts, recv4, recv_counts);
    values = recv4.to_vector<float>();
    int64_t at = 0;
    for (int q = 0; q < s; ++q)
      for (int64_t k = 0; k < recv_counts[q]; ++k)
        for (int64_t c = 0; c < 4; ++c) REQUIRE(values[at++] == static_cast<float>(pair_payload(q, me, k, c)));
  }
  SECTION("counts that disagree with the tensors are errors") {
    std::vector<int64_t> too_many = send_counts;
    too_many[0] += 1;
    REQUIRE_THROWS_WITH(comm->all_to_all_v(send, too_many, recv, recv_counts),
                        Contains("all_to_all_v: send counts sum to"));
    REQUIRE_THROWS_WITH(comm->all_to_all_v(send, std::vector<int64_t>(s + 1, 0), recv, recv_counts),
                        Contains("need one count per rank"));
    Tensor narrow = zeros({num_recv, width + 1}, DType::i64);
    REQUIRE_THROWS_WITH(comm->all_to_all_v(send, send_counts, narrow, recv_counts), Contains("row shapes differ"));
  }
}

TEST_CASE("reduce_scatter_v_sum gives rank r the sum of its part, uneven and empty parts included",
          "[parallel]") {
  auto comm = world();
  const int s = comm->size(), me = comm->rank();
  const int64_t rank_sum = int64_t{s} * (s - 1) / 2;
  // Parts of 0, 3, 1, 5, ... elements (rank 0's part is empty).
  std::vector<int64_t> counts(static_cast<size_t>(s));
  for (int r = 0; r < s; ++r) counts[static_cast<size_t>(r)] = r == 0 ? 0 : (2 * r + 1) % 6;
  const int64_t n = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const int64_t begin = std::accumulate(counts.begin(), counts.begin() + me, int64_t{0});
  // in_q[j] = 10000 q + j  =>  out_r[i] = 10000 * sum(q) + s * (begin_r + i)
  for (DType dtype : {DType::f32, DType::f64, DType::i64}) {
    INFO(dtype_name(dtype));
    Tensor in = dtype == DType::i64   ? filled<int64_t>(n, dtype, [&](int64_t j) { return 10000 * me + j; })
                : dtype == DType::f64 ? filled<double>(n, dtype, [&](int64_t j) { return 10000.0 * me + j; })
                                      : filled<float>(n, dtype, [&](int64_t j) { return 10000.0f * me + j; });
    Tensor out = zeros({counts[static_cast<size_t>(me)]}, dtype);
    comm->reduce_scatter_v_sum(in, counts, out);
    auto got = out.to_vector<double>();
    REQUIRE(got.size() == static_cast<size_t>(counts[static_cast<size_t>(me)]));
    for (size_t i = 0; i < got.size(); ++i)
      REQUIRE(got[i] == static_cast<double>(10000 * rank_sum + s * (begin + static_cast<int64_t>(i))));
  }
  SECTION("in place, into this rank's part of the input") {
    Tensor in = filled<double>(n, DType::f64, [&](int64_t j) { return 10000.0 * me + j; });
    Tensor part = in.rows(begin, begin + counts[static_cast<size_t>(me)]);
    comm->reduce_scatter_v_sum(in, counts, part);
    auto got = part.to_vector<double>();
    for (size_t i = 0; i < got.size(); ++i)
      REQUIRE(got[i] == static_cast<double>(10000 * rank_sum + s * (begin + static_cast<int64_t>(i))));
    if (counts[static_cast<size_t>(me)] > 0 && (begin > 0 || n > counts[static_cast<size_t>(me)])) {
      Tensor shifted = begin > 0 ? in.rows(begin - 1, begin - 1 + counts[static_cast<size_t>(me)])
                                 : in.rows(1, 1 + counts[static_cast<size_t>(me)]);
      REQUIRE_THROWS_WITH(comm->reduce_scatter_v_sum(in, counts, shifted),
                          Contains("out overlaps in other than at this rank's part"));
    }
  }
  SECTION("equal parts") {
    std::vector<int64_t> equal(static_cast<size_t>(s), 4);
    Tensor in = filled<float>(4 * s, DType::f32, [&](int64_t j) { return 100.0f * me + j; });
    Tensor out = zeros({4}, DType::f32);
    comm->reduce_scatter_v_sum(in, equal, out);
    auto got = out.to_vector<double>();
    for (int64_t i = 0; i < 4; ++i) REQUIRE(got[i] == static_cast<double>(100 * rank_sum + s * (4 * me + i)));
  }
  SECTION("every part empty") {
    Tensor in = zeros({0}, DType::f32), out = zeros({0}, DType::f32);
    comm->reduce_scatter_v_sum(in, std::vector<int64_t>(static_cast<size_t>(s), 0), out);
    REQUIRE(out.numel() == 0);
  }
  SECTION("counts that disagree with the tensors are errors") {
    Tensor in = zeros({n}, DType::f32), out = zeros({counts[static_cast<size_t>(me)]}, DType::f32);
    REQUIRE_THROWS_WITH(comm->reduce_scatter_v_sum(in, std::vector<int64_t>(static_cast<size_t>(s) + 1, 0), out),
                        Contains("reduce_scatter_v_sum: need one count per rank"));
    std::vector<int64_t> more = counts;
    more[0] += 1;
    REQUIRE_THROWS_WITH(comm->reduce_scatter_v_sum(in, more, out), Contains("counts sum to"));
    std::vector<int64_t> negative = counts;
    negative[static_cast<size_t>(s - 1)] = -1;
    REQUIRE_THROWS_WITH(comm->reduce_scatter_v_sum(in, negative, out), Contains("negative count"));
    Tensor wrong = zeros({counts[static_cast<size_t>(me)] + 1}, DType::f32);
    REQUIRE_THROWS_WITH(comm->reduce_scatter_v_sum(in, counts, wrong), Contains("this rank's count is"));
  }
}

TEST_CASE("traffic counts a reduce-scatter at half an all-reduce's bytes", "[parallel]") {
  auto comm = world();
  const int s = comm->size();
  const int64_t n = 12 * s;
  Tensor x = zeros({n}, DType::f32), out = zeros({12}, DType::f32);
  comm->reset_traffic();
  comm->all_reduce_sum(x);
  const int64_t all_reduce = comm->traffic().reduction_bytes;
  comm->reset_traffic();
  comm->reduce_scatter_v_sum(x, std::vector<int64_t>(static_cast<size_t>(s), 12), out);
  const int64_t reduce_scatter = comm->traffic().reduction_bytes;
  REQUIRE(all_reduce == 2 * (s - 1) * n * 4 / s);
  REQUIRE(reduce_scatter == (s - 1) * 12 * 4);
  REQUIRE(2 * reduce_scatter == all_reduce);
}

TEST_CASE("all_to_all_v_start returns with the exchange in flight; wait completes it", "[parallel]") {
  auto comm = world();
  const int s = comm->size(), me = comm->rank();
  std::vector<int64_t> send_counts(static_cast<size_t>(s));
  for (int d = 0; d < s; ++d) send_counts[static_cast<size_t>(d)] = pair_rows(me, d);
  const std::vector<int64_t> recv_counts = comm->all_to_all_counts(send_counts);
  const int64_t num_send = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  const int64_t num_recv = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  std::vector<int64_t> payload;
  for (int d = 0; d < s; ++d)
    for (int64_t k = 0; k < send_counts[static_cast<size_t>(d)]; ++k) payload.push_back(pair_payload(me, d, k, 0));
  Tensor send = from_vector(payload, {num_send, 1}, DType::i64);
  Tensor recv = from_vector(std::vector<int64_t>(static_cast<size_t>(num_recv), -1), {num_recv, 1}, DType::i64);
  comm->reset_traffic();
  REQUIRE(comm->in_flight() == 0);
  auto pending = comm->all_to_all_v_start(send, send_counts, recv, recv_counts);
  REQUIRE(comm->in_flight() == 1);
  pending->wait();
  REQUIRE(comm->in_flight() == 0);
  pending->wait();  // idempotent
  REQUIRE(comm->in_flight() == 0);
  auto got = recv.to_vector<int64_t>();
  int64_t row = 0;
  for (int q = 0; q < s; ++q)
    for (int64_t k = 0; k < recv_counts[static_cast<size_t>(q)]; ++k, ++row)
      REQUIRE(got[static_cast<size_t>(row)] == pair_payload(q, me, k, 0));
  REQUIRE(comm->traffic().all_to_all_bytes == (num_send - send_counts[static_cast<size_t>(me)]) * 8);
  SECTION("a handle dropped without wait completes in its destructor") {
    { auto dropped = comm->all_to_all_v_start(send, send_counts, recv, recv_counts); }
    REQUIRE(comm->in_flight() == 0);
  }
}

TEST_CASE("send and recv move tensors around a ring", "[parallel]") {
  auto comm = world();
  int s = comm->size(), me = comm->rank();
  if (s == 1) {
    Tensor x = zeros({1}, DType::f32);
    REQUIRE_THROWS_WITH(comm->send(x, 0), Contains("send: peer 0 is this rank"));
    return;
  }
  int next = (me + 1) % s, prev = (me + s - 1) % s;
  int64_t n = 9;
  Tensor mine = filled<int64_t>(n, DType::i64, [&](int64_t i) { return me * 100 + i; });
  Tensor got = zeros({n}, DType::i64);
  // Even ranks send first, odd ranks receive first: blocking calls that cannot deadlock.
  if (me % 2 == 0) {
    comm->send(mine, next);
    comm->recv(got, prev);
  } else {
    comm->recv(got, prev);
    comm->send(mine, next);
  }
  auto values = got.to_vector<int64_t>();
  for (int64_t i = 0; i < n; ++i) REQUIRE(values[i] == prev * 100 + i);

  // send_recv: every rank sends and receives at once, the other way round the ring.
  Tensor back = zeros({n}, DType::i64);
  comm->send_recv(mine, prev, back, next);
  values = back.to_vector<int64_t>();
  for (int64_t i = 0; i < n; ++i) REQUIRE(values[i] == next * 100 + i);

  // batch_send_recv: both ways round the ring at once, two messages to each neighbour (matched
  // in list order); with 2 ranks both neighbours are the same rank.
  Tensor twice = filled<int64_t>(n, DType::i64, [&](int64_t i) { return me * 1000 + i; });
  Tensor from_prev = zeros({n}, DType::i64), from_next = zeros({n}, DType::i64);
  Tensor from_prev2 = zeros({n}, DType::i64), from_next2 = zeros({n}, DType::i64);
  std::vector<P2pOp> ops{{mine, next, true},      {from_prev, prev, false}, {mine, prev, true},
                         {from_next, next, false}, {twice, next, true},      {from_prev2, prev, false},
                         {twice, prev, true},      {from_next2, next, false}};
  comm->batch_send_recv(ops);
  // With 2 ranks prev == next: the four messages from that rank arrive in its list order.
  const std::vector<int64_t> a = from_prev.to_vector<int64_t>(), b = from_next.to_vector<int64_t>();
  const std::vector<int64_t> c = from_prev2.to_vector<int64_t>(), d = from_next2.to_vector<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(a[i] == prev * 100 + i);
    REQUIRE(b[i] == next * 100 + i);
    REQUIRE(c[i] == prev * 1000 + i);
    REQUIRE(d[i] == next * 1000 + i);
  }
  comm->barrier();
}

TEST_CASE("split forms sub-groups ordered by key", "[parallel]") {
  auto comm = world();
  int s = comm->size(), me = comm->rank();
  // Parity groups, ordered by descending world rank (key = -rank).
  auto sub = comm->split(me % 2, -me);
  REQUIRE(sub != nullptr);
  std::vector<int> members;
  for (int q = s - 1; q >= 0; --q)
    if (q % 2 == me % 2) members.push_back(q);
  REQUIRE(sub->size() == static_cast<int>(members.size()));
  REQUIRE(members[sub->rank()] == me);
  // A sum inside the group sees only its members.
  std::vector<double> value = {static_cast<double>(me)};
  sub->all_reduce_sum(value);
  REQUIRE(value[0] == std::accumulate(members.begin(), members.end(), 0.0));
  Tensor gathered = zeros({sub->size()}, DType::i32);
  sub->all_gather(from_vector(std::vector<int32_t>{me}, {1}, DType::i32), gathered);
  REQUIRE(gathered.to_vector<int32_t>() == members);

  // A negative color opts out: rank 0 gets no communicator, the others one group without it.
  auto rest = comm->split(me == 0 ? -1 : 0, me);
  if (me == 0) {
    REQUIRE(rest == nullptr);
  } else {
    REQUIRE(rest != nullptr);
    REQUIRE(rest->size() == s - 1);
    REQUIRE(rest->rank() == me - 1);
  }
}

#if !MOE_WITH_CUDA
TEST_CASE("a CUDA world communicator needs a CUDA build", "[parallel]") {
  REQUIRE_THROWS_WITH(make_world_communicator(Device::cuda(0)), Contains("needs NCCL"));
}
#endif

}  // namespace
}  // namespace moe

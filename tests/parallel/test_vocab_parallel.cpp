// Vocabulary-parallel embedding and cross-entropy on CPU ranks under mpirun (2 and 4 ranks, 4
// ranks also as two TP groups of 2, and groups of one / no group): in f64, every rank's shard of
// the same problem gives the unsharded ops' embedding output, table-gradient rows, loss sum, lse
// and logit-gradient columns; bad vocabulary splits and targets fail with a message naming them.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/model/vocab_parallel.h"
#include "tests/parallel/tp_groups.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

constexpr double k_tol = 1e-10;

// Columns [begin, end) of x[rows, cols] (f64) as a new [rows, end - begin] tensor.
Tensor column_block(const Tensor& x, int64_t begin, int64_t end) {
  const auto v = x.to_vector<double>();
  const int64_t rows = x.size(0), cols = x.size(1);
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r) out.insert(out.end(), v.begin() + r * cols + begin, v.begin() + r * cols + end);
  return Tensor::from_vector(out, {rows, end - begin}, DType::f64);
}

// The unsharded ops on the whole problem.
struct Reference {
  Tensor emb, dtable, lse, dlogits;
  double loss_sum = 0;
  int64_t num_targets = 0;
};

Reference reference(const Tensor& ids, const Tensor& table, const Tensor& dout, const Tensor& logits,
                    const Tensor& targets, float scale) {
  Reference ref;
  const int64_t rows = logits.size(0);
  ref.emb = Tensor::empty({ids.numel(), table.size(1)}, DType::f64);
  ops::embedding_forward(ids, table, ref.emb);
  ref.dtable = Tensor::zeros(table.shape(), DType::f64);
  ops::embedding_backward(ids, dout, ref.dtable);
  Tensor loss = Tensor::empty({rows}, DType::f64);
  ref.lse = Tensor::empty({rows}, DType::f64);
  ops::cross_entropy_forward(logits, targets, loss, ref.lse);
  ref.loss_sum = ops::sum(loss);
  for (int32_t t : targets.to_vector<int32_t>()) ref.num_targets += t >= 0 ? 1 : 0;
  ref.dlogits = Tensor::empty(logits.shape(), DType::f64);
  ops::cross_entropy_backward(logits, targets, ref.lse, scale, ref.dlogits);
  return ref;
}

// Every rank of the group reports the same value, bit for bit.
void require_same_on_group(double value, Communicator& group) {
  std::vector<double> v = {value, -value};
  group.all_reduce_max(v);
  REQUIRE(v[0] == value);
  REQUIRE(-v[1] == value);
}

}  // namespace

TEST_CASE("vocab-parallel embedding and cross-entropy equal the unsharded ops", "[parallel][tp][vocab]") {
  auto world = make_world_communicator(Device::cpu());
  auto groups = test::tp_groups(*world, true);
  const int64_t vocab = 24, dim = 5, rows = 11;
  const float scale = 0.3125f;
  // Ids and targets in every shard of every split (2 and 4 ways), repeats, and ignored targets.
  const std::vector<int32_t> iv = {0, 23, 5, 6, 11, 12, 17, 18, 6, 0, 13};
  const std::vector<int32_t> tv = {2, -1, 23, 6, 11, 12, -100, 18, 5, 17, 0};
  Tensor ids = Tensor::from_vector(iv, {rows}, DType::i32);
  Tensor targets = Tensor::from_vector(tv, {rows}, DType::i32);
  Tensor table = test::random_tensor({vocab, dim}, DType::f64, 71);
  Tensor dout = test::random_tensor({rows, dim}, DType::f64, 72);
  Tensor logits = test::random_tensor({rows, vocab}, DType::f64, 73, Device::cpu(), -5.0, 5.0);
  const Reference ref = reference(ids, table, dout, logits, targets, scale);

  for (int use_null = 0; use_null < 2; ++use_null) {
    for (auto& group : groups) {
      if (use_null && group->size() > 1) continue;
      Communicator* tp = use_null ? nullptr : group.get();
      const int parts = tp ? tp->size() : 1, rank = tp ? tp->rank() : 0;
      INFO("tp " << parts << (use_null ? " (no communicator)" : "") << " rank " << rank);
      const int64_t local = vocab / parts, begin = rank * local, end = begin + local;
      REQUIRE(vocab_shard(vocab, tp).start == (parts > 1 ? begin : 0));

      Tensor table_local = table.rows(begin, end).clone();
      Tensor emb = vocab_parallel_embedding(ids, table_local, vocab, tp);
      test::require_close(emb, ref.emb, k_tol, 0, "embedding output");
      Tensor dtable_local = Tensor::zeros({local, dim}, DType::f64);
      vocab_parallel_embedding_backward(ids, dout, dtable_local, vocab, tp);
      test::require_close(dtable_local, ref.dtable.rows(begin, end), k_tol, 0, "embedding dtable rows");

      Tensor logits_local = column_block(logits, begin, end);
      VocabParallelLoss loss = vocab_parallel_cross_entropy(logits_local, targets, vocab, tp);
      REQUIRE(loss.num_targets == ref.num_targets);
      test::require_close({loss.loss_sum()}, {ref.loss_sum}, k_tol, 1e-12, "loss sum");
      REQUIRE(loss.lse.dtype() == DType::f64);
      test::require_close(loss.lse, ref.lse, k_tol, 1e-12, "global lse");
      if (tp) require_same_on_group(loss.loss_sum(), *tp);

      Tensor dlogits = vocab_parallel_cross_entropy_backward(logits_local, targets, loss.lse, scale, vocab, tp);
      test::require_close(dlogits, column_block(ref.dlogits, begin, end), k_tol, 0, "dlogits columns");
    }
  }
}

TEST_CASE("vocab parallelism rejects vocabularies that do not split and bad targets", "[parallel][tp][vocab]") {
  auto world = make_world_communicator(Device::cpu());
  const int64_t n = world->size();
  const int64_t vocab = n == 4 ? 10 : 2 * n + 1;  // 10 with 4 ranks, 5 with 2
  const std::string named = "model.vocab_size " + std::to_string(vocab) + " does not divide by parallel.tp = " +
                            std::to_string(n);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{0, 1}, {2}, DType::i32);
  Tensor table = test::random_tensor({2, 3}, DType::f64, 81), dtable = Tensor::zeros({2, 3}, DType::f64);
  Tensor dout = test::random_tensor({2, 3}, DType::f64, 82), logits = test::random_tensor({2, 2}, DType::f64, 83);
  Tensor lse = Tensor::zeros({2}, DType::f64);
  REQUIRE_THROWS_WITH(vocab_parallel_embedding(ids, table, vocab, world.get()), Contains(named));
  REQUIRE_THROWS_WITH(vocab_parallel_embedding_backward(ids, dout, dtable, vocab, world.get()), Contains(named));
  REQUIRE_THROWS_WITH(vocab_parallel_cross_entropy(logits, ids, vocab, world.get()), Contains(named));
  REQUIRE_THROWS_WITH(vocab_parallel_cross_entropy_backward(logits, ids, lse, 1.0f, vocab, world.get()),
                      Contains(named));

  // A local part that is not V/tp, and a target outside the whole vocabulary.
  const int64_t good = 3 * n;
  REQUIRE_THROWS_WITH(vocab_parallel_embedding(ids, table, good, world.get()),
                      Contains("the embedding table holds 2 vocabulary entries, expected model.vocab_size " +
                               std::to_string(good) + " / parallel.tp " + std::to_string(n) + " = 3"));
  Tensor logits3 = test::random_tensor({2, 3}, DType::f64, 84);
  Tensor bad_targets = Tensor::from_vector(std::vector<int32_t>{-1, static_cast<int32_t>(good)}, {2}, DType::i32);
  REQUIRE_THROWS_WITH(vocab_parallel_cross_entropy(logits3, bad_targets, good, world.get()),
                      Contains("target " + std::to_string(good) + " of row 1 is outside the vocabulary [0," +
                               std::to_string(good) + ")"));
}

}  // namespace moe

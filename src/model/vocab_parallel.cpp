// Vocabulary-parallel embedding (sharded lookup + all-reduce) and cross-entropy (sharded
// logits: the per-rank log-sum-exps and target losses are combined on the host in f64; one rank
// keeps its per-row losses on the device).
#include "src/model/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {

namespace {

bool is_sharded(const Communicator* tp) { return tp != nullptr && tp->size() > 1; }

// The local part of the vocabulary must be exactly the rank's V/tp ids.
void check_local(int64_t local, int64_t vocab_size, const Communicator* tp, const char* what) {
  const int64_t parts = is_sharded(tp) ? tp->size() : 1;
  MOE_CHECK(local == vocab_size / parts, what, " holds ", local, " vocabulary entries, expected model.vocab_size ",
            vocab_size, " / parallel.tp ", parts, " = ", vocab_size / parts);
}

// Host copy of a vector as an accum-dtype tensor on `device`.
Tensor upload_accum(const std::vector<double>& values, DType accum, Device device) {
  const Shape shape{static_cast<int64_t>(values.size())};
  if (accum == DType::f64) return Tensor::from_vector(values, shape, accum, device);
  MOE_CHECK(accum == DType::f32, "vocab-parallel cross-entropy: unexpected accum dtype ", dtype_name(accum));
  return Tensor::from_vector(std::vector<float>(values.begin(), values.end()), shape, accum, device);
}

// gathered[tp*T]: rank r's local lse in [r*T, (r+1)*T) -> the lse over the whole vocabulary,
// max-shifted in f64.
std::vector<double> combine_lse(const std::vector<double>& gathered, int64_t rows, int parts) {
  std::vector<double> out(static_cast<size_t>(rows));
  for (int64_t t = 0; t < rows; ++t) {
    double m = -INFINITY;
    for (int r = 0; r < parts; ++r) m = std::max(m, gathered[static_cast<size_t>(r * rows + t)]);
    double s = 0;
    for (int r = 0; r < parts; ++r) s += std::exp(gathered[static_cast<size_t>(r * rows + t)] - m);
    out[static_cast<size_t>(t)] = m + std::log(s);
  }
  return out;
}

}  // namespace

int64_t count_loss_targets(const Tensor& targets, const std::vector<int32_t>* host_targets) {
  MOE_CHECK(host_targets == nullptr || static_cast<int64_t>(host_targets->size()) == targets.numel(),
            "cross-entropy: ", host_targets ? host_targets->size() : 0, " host targets for ", targets.numel(),
            " device targets");
  auto counted = [](const std::vector<int32_t>& tv) {
    return std::count_if(tv.begin(), tv.end(), [](int32_t t) { return t >= 0; });
  };
  return host_targets ? counted(*host_targets) : counted(targets.to_vector<int32_t>());
}

ops::VocabShard vocab_shard(int64_t vocab_size, const Communicator* tp) {
  if (!is_sharded(tp)) return {};
  MOE_CHECK(vocab_size > 0 && vocab_size % tp->size() == 0, "vocabulary parallelism: model.vocab_size ", vocab_size,
            " does not divide by parallel.tp = ", tp->size());
  return {tp->rank() * (vocab_size / tp->size()), vocab_size};
}

Tensor vocab_parallel_embedding(const Tensor& ids, const Tensor& table_local, int64_t vocab_size, Communicator* tp) {
  Tensor out = vocab_parallel_embedding_partial(ids, table_local, vocab_size, tp);
  if (is_sharded(tp)) tp->all_reduce_sum(out);  // one owner per id, zeros elsewhere: exact
  return out;
}

Tensor vocab_parallel_embedding_partial(const Tensor& ids, const Tensor& table_local, int64_t vocab_size,
                                        const Communicator* tp) {
  const ops::VocabShard shard = vocab_shard(vocab_size, tp);
  MOE_CHECK(table_local.ndim() == 2, "vocab-parallel embedding table must be [V/tp, d], got ",
            shape_str(table_local.shape()));
  check_local(table_local.size(0), vocab_size, tp, "the embedding table");
  Tensor out = Tensor::empty({ids.numel(), table_local.size(1)}, table_local.dtype(), table_local.device());
  ops::embedding_forward(ids, table_local, out, shard);
  return out;
}

void vocab_parallel_embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable_local,
                                       int64_t vocab_size, Communicator* tp) {
  const ops::VocabShard shard = vocab_shard(vocab_size, tp);
  MOE_CHECK(dtable_local.ndim() == 2, "vocab-parallel embedding gradient must be [V/tp, d], got ",
            shape_str(dtable_local.shape()));
  check_local(dtable_local.size(0), vocab_size, tp, "the embedding gradient");
  ops::embedding_backward(ids, dout, dtable_local, shard);
}

VocabParallelLoss vocab_parallel_cross_entropy(const Tensor& logits_local, const Tensor& targets, int64_t vocab_size,
                                               Communicator* tp, const std::vector<int32_t>* host_targets) {
  const ops::VocabShard shard = vocab_shard(vocab_size, tp);
  MOE_CHECK(logits_local.ndim() == 2, "vocab-parallel logits must be [T, V/tp], got ",
            shape_str(logits_local.shape()));
  check_local(logits_local.size(1), vocab_size, tp, "the logits");
  const int64_t rows = logits_local.size(0);
  const DType accum = ops::accum_dtype(logits_local.dtype());
  const Device device = logits_local.device();
  Tensor loss = Tensor::empty({rows}, accum, device), lse = Tensor::empty({rows}, accum, device);
  VocabParallelLoss out;
  out.num_targets = count_loss_targets(targets, host_targets);
  if (!is_sharded(tp)) {
    ops::cross_entropy_forward(logits_local, targets, loss, lse);
    out.loss = loss;
    out.lse = lse;
    return out;
  }
  // The CUDA kernel cannot report a bad target without a sync; the host copy is here anyway.
  const std::vector<int32_t> tv = host_targets ? *host_targets : targets.to_vector<int32_t>();
  for (size_t t = 0; t < tv.size(); ++t) {
    MOE_CHECK(tv[t] < vocab_size, "cross-entropy: target ", tv[t], " of row ", t, " is outside the vocabulary [0,",
              vocab_size, ")");
  }
  ops::cross_entropy_forward(logits_local, targets, loss, lse, shard);
  Tensor gathered = Tensor::empty({tp->size() * rows}, accum, device);
  tp->all_gather(lse, gathered);
  const std::vector<double> lse_global = combine_lse(gathered.to_vector<double>(), rows, tp->size());
  // The owner of a row's target knows lse_local - logit; its loss over the whole vocabulary is
  // that plus lse_global - lse_local (no cancellation against a large lse). Others add 0.
  const std::vector<double> lse_local = lse.to_vector<double>(), loss_local = loss.to_vector<double>();
  const int64_t local = logits_local.size(1);
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  for (size_t t = 0; t < row_loss.size(); ++t) {
    const bool owner = tv[t] >= shard.start && tv[t] < shard.start + local;
    if (owner) row_loss[t] = loss_local[t] + (lse_global[t] - lse_local[t]);
  }
  tp->all_reduce_sum(row_loss);
  for (size_t t = 0; t < row_loss.size(); ++t) row_loss[t] = tv[t] >= 0 ? row_loss[t] : 0.0;
  out.loss = upload_accum(row_loss, accum, device);
  out.lse = upload_accum(lse_global, accum, device);
  return out;
}

Tensor vocab_parallel_cross_entropy_backward(Tensor logits_local, const Tensor& targets, const Tensor& lse,
                                             float scale, int64_t vocab_size, Communicator* tp) {
  const ops::VocabShard shard = vocab_shard(vocab_size, tp);
  MOE_CHECK(logits_local.ndim() == 2, "vocab-parallel logits must be [T, V/tp], got ",
            shape_str(logits_local.shape()));
  check_local(logits_local.size(1), vocab_size, tp, "the logits");
  ops::cross_entropy_backward(logits_local, targets, lse, scale, logits_local, shard);
  return logits_local;
}

int64_t vocab_parallel_correct(const Tensor& logits_local, const std::vector<int32_t>& host_targets,
                               int64_t vocab_size, Communicator* tp) {
  MOE_CHECK(logits_local.ndim() == 2 && logits_local.size(0) == static_cast<int64_t>(host_targets.size()),
            "prediction accuracy: ", host_targets.size(), " targets for logits of ", logits_local.size(0), " rows");
  const int64_t local = logits_local.size(1);
  check_local(local, vocab_size, tp, "prediction accuracy: the logits");
  const ops::VocabShard shard = vocab_shard(vocab_size, tp);
  std::vector<int32_t> rows;
  for (size_t t = 0; t < host_targets.size(); ++t) {
    if (host_targets[t] >= 0) rows.push_back(static_cast<int32_t>(t));
  }
  if (rows.empty()) return 0;
  const auto n = static_cast<int64_t>(rows.size());
  Tensor picked = Tensor::empty({n, local}, logits_local.dtype(), logits_local.device());
  ops::gather_rows(logits_local, Tensor::from_vector(rows, {n}, DType::i32, logits_local.device()), picked);
  const std::vector<double> values = picked.to_vector<double>();  // bf16 or f32, on any device
  // Per row: the local maximum, and the target's logit where this rank holds the target.
  std::vector<double> stats(static_cast<size_t>(2 * n), 0.0);
  const int parts = is_sharded(tp) ? tp->size() : 1;
  for (int64_t i = 0; i < n; ++i) {
    const double* row = values.data() + i * local;
    const int32_t target = host_targets[static_cast<size_t>(rows[static_cast<size_t>(i)])];
    const int64_t at = target - shard.start;
    stats[static_cast<size_t>(2 * i)] = *std::max_element(row, row + local);
    if (at >= 0 && at < local) stats[static_cast<size_t>(2 * i + 1)] = row[at];
  }
  if (parts > 1) {
    // Every rank's maxima side by side, and the target logit from its owner, in one sum.
    std::vector<double> all(static_cast<size_t>(n * (parts + 1)), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      all[static_cast<size_t>(i * (parts + 1) + tp->rank())] = stats[static_cast<size_t>(2 * i)];
      all[static_cast<size_t>(i * (parts + 1) + parts)] = stats[static_cast<size_t>(2 * i + 1)];
    }
    tp->all_reduce_sum(all);
    for (int64_t i = 0; i < n; ++i) {
      const double* r = all.data() + i * (parts + 1);
      stats[static_cast<size_t>(2 * i)] = *std::max_element(r, r + parts);
      stats[static_cast<size_t>(2 * i + 1)] = r[parts];
    }
  }
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) correct += stats[static_cast<size_t>(2 * i + 1)] >= stats[static_cast<size_t>(2 * i)];
  return correct;
}

}  // namespace moe

// Tensor-parallel weight registration: column and row shards of canonical tensors, or the whole
// tensor when the group has one rank.
#include "src/nn/tensor_parallel.h"

namespace moe {

int64_t TpGroup::part(int64_t n, const std::string& what) const {
  MOE_CHECK(n % size() == 0, what, " = ", n, " does not divide by parallel.tp = ", size(),
            ": tensor parallelism splits it into equal parts");
  return n / size();
}

Tensor TpGroup::gather_tokens(const Tensor& x) const {
  if (!sequence_sharded()) return x;
  Shape shape = x.shape();
  shape[0] *= size();
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  comm->all_gather(x, out);
  return out;
}

Tensor TpGroup::reduce_tokens(Tensor& y) const {
  if (!sequence_sharded()) {
    all_reduce(y);
    return y;
  }
  Shape shape = y.shape();
  MOE_CHECK(!shape.empty() && shape[0] % size() == 0, "sequence parallelism: ", shape.empty() ? 0 : shape[0],
            " token rows do not divide by parallel.tp = ", size());
  shape[0] /= size();
  Tensor out = Tensor::empty(shape, y.dtype(), y.device());
  comm->reduce_scatter_sum(y, out);
  return out;
}

ParamId add_column_parallel(ParamStore& store, const std::string& name, const Shape& full_shape, int64_t col_blocks,
                            int64_t units, ParamKind kind, double init_std, const TpGroup& tp) {
  if (!tp.active()) return store.add(name, full_shape, ParamGroup::dense, kind, ParamInit::normal, init_std);
  const int64_t block = full_shape.back() / col_blocks;
  const int64_t cols = tp.part(block / units, "'" + name + "': the column units") * units;
  return store.add_col_shard(name, full_shape, tp.rank() * cols, cols, col_blocks, ParamGroup::dense, kind,
                             ParamInit::normal, init_std);
}

ParamId add_column_parallel_bias(ParamStore& store, const std::string& name, int64_t width, int64_t col_blocks,
                                 int64_t units, const TpGroup& tp) {
  if (!tp.active()) return store.add(name, {width}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::zeros);
  const int64_t cols = tp.part(width / col_blocks / units, "'" + name + "': the column units") * units;
  return store.add_col_shard(name, {width}, tp.rank() * cols, cols, col_blocks, ParamGroup::dense,
                             ParamKind::norm_or_bias, ParamInit::zeros, 0.0);
}

ParamId add_row_parallel(ParamStore& store, const std::string& name, const Shape& full_shape, int64_t units,
                         ParamKind kind, double init_std, const TpGroup& tp) {
  if (!tp.active()) return store.add(name, full_shape, ParamGroup::dense, kind, ParamInit::normal, init_std);
  const int64_t rows = tp.part(full_shape[0] / units, "'" + name + "': the row units") * units;
  return store.add_row_shard(name, full_shape, tp.rank() * rows, rows, SplitOver::tp, ParamGroup::dense, kind,
                             ParamInit::normal, init_std);
}

}  // namespace moe

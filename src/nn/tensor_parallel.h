// Megatron-style tensor parallelism for the modules: how a weight splits over the TP group
// (column- or row-parallel) and the all-reduce that joins the partial results.
#pragma once

#include <string>

#include "parallel/communicator.h"
#include "src/nn/param_store.h"

namespace moe {

// A module's tensor-parallel group: nullptr or a group of one means no tensor parallelism, and
// then every call below does the single-rank thing (whole weights, no communication).
struct TpGroup {
  Communicator* comm = nullptr;
  int size() const { return comm != nullptr ? comm->size() : 1; }
  int rank() const { return comm != nullptr ? comm->rank() : 0; }
  bool active() const { return size() > 1; }
  // x <- sum over the group (the Megatron g operator forward / f operator backward).
  void all_reduce(Tensor& x) const {
    if (active()) comm->all_reduce_sum(x);
  }
  // [0, n) split in size() equal parts: this rank's part, checked to divide (what names the
  // quantity in the error, e.g. "attention 'layers.0.attn': num_heads").
  int64_t part(int64_t n, const std::string& what) const;
};

// W[in, out] column-parallel: this rank keeps out/size columns of each of col_blocks blocks
// (2 for a GLU w_up = [gate | up]); whole without TP. units: how many columns make one
// indivisible unit (head_dim for attention heads), so the split cuts whole units.
ParamId add_column_parallel(ParamStore& store, const std::string& name, const Shape& full_shape, int64_t col_blocks,
                            int64_t units, ParamKind kind, double init_std, const TpGroup& tp);
// W[in, out] row-parallel: this rank keeps in/size rows (cut in whole units of `units` rows).
ParamId add_row_parallel(ParamStore& store, const std::string& name, const Shape& full_shape, int64_t units,
                         ParamKind kind, double init_std, const TpGroup& tp);
// The bias b[width] of a column-parallel weight (zeros, ParamKind::norm_or_bias): sharded with its
// columns (the same col_blocks and units). A row-parallel weight's bias is a plain replicated
// parameter, added once after the all-reduce.
ParamId add_column_parallel_bias(ParamStore& store, const std::string& name, int64_t width, int64_t col_blocks,
                                 int64_t units, const TpGroup& tp);

}  // namespace moe

// Megatron-style tensor parallelism for the modules: how a weight splits over the TP group
// (column- or row-parallel) and the all-reduce that joins the partial results.
#pragma once

#include <string>

#include "parallel/communicator.h"
#include "src/nn/param_store.h"

namespace moe {

// A module's tensor-parallel group: nullptr or a group of one means no tensor parallelism, and
// then every call below does the single-rank thing (whole weights, no communication).
// Sequence parallelism (Megatron-LM, Korthikanti et al. 2022): the activations between the
// tensor-parallel regions (norms, residual adds) are split along the tokens, rank r holding rows
// [r*T/tp, (r+1)*T/tp); a column-parallel region starts with an all-gather of its input along the
// tokens and a row-parallel one ends with a reduce-scatter in place of the all-reduce.
struct TpGroup {
  Communicator* comm = nullptr;
  bool sequence_parallel = false;  // parallel.sequence_parallel (only meaningful when active())
  int size() const { return comm != nullptr ? comm->size() : 1; }
  int rank() const { return comm != nullptr ? comm->rank() : 0; }
  bool active() const { return size() > 1; }
  // Whether the activations outside the tensor-parallel regions hold this rank's tokens only.
  bool sequence_sharded() const { return sequence_parallel && active(); }
  // x <- sum over the group (the Megatron g operator forward / f operator backward).
  void all_reduce(Tensor& x) const {
    if (active()) comm->all_reduce_sum(x);
  }
  // [0, n) split in size() equal parts: this rank's part, checked to divide (what names the
  // quantity in the error, e.g. "attention 'layers.0.attn': num_heads").
  int64_t part(int64_t n, const std::string& what) const;
  // The input of a column-parallel region (forward) or the output gradient of a row-parallel one
  // (backward). Sequence-sharded: x_local[T/tp, d] -> x[T, d], the all-gather along the tokens;
  // otherwise x itself (already whole on every rank).
  Tensor gather_tokens(const Tensor& x) const;
  // The partial sums leaving a row-parallel region (forward) or the input gradient of a
  // column-parallel one (backward). Sequence-sharded: y[T, d] -> y_local[T/tp, d], the
  // reduce-scatter along the tokens; otherwise y summed over the group in place and returned.
  Tensor reduce_tokens(Tensor& y) const;
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

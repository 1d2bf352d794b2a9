// Megatron-style tensor-parallel dense FFN: w_up column-parallel (a GLU rank keeps its gate and
// up columns together), w_down row-parallel; one all-reduce of y forward and one of dx backward.
#pragma once

#include <string>

#include "parallel/communicator.h"
#include "src/model/dense_ffn.h"
#include "src/model/param_store.h"

namespace moe {

// Rank r of the tp group holds hidden units [r*f/tp, (r+1)*f/tp). Parameters keep DenseFfn's
// canonical names and whole shapes:
//   w_up[d, f] (GLU: [d, 2f] = [gate | up]): a column shard with 1 block (GLU: 2 blocks), stored
//     locally as [d, f/tp] (GLU: [d, 2f/tp] = [gate cols of the slice | up cols of the slice], the
//     layout ffn_forward expects);
//   w_down[f, d]: a row shard of the same hidden units.
class TpDenseFfn {
 public:
  // Requires d_ff divisible by tp.size(); keeps a reference to tp.
  TpDenseFfn(ParamStore& store, const std::string& prefix, int64_t d_model, int64_t d_ff, ops::Activation act,
             double init_std, double out_init_std, Communicator& tp);
  // x[T, d] (the same on every rank) -> y[T, d] (all-reduced)
  Tensor forward(const Tensor& x, FfnSaved& saved) const;
  // dy[T, d] (the same on every rank) -> dx[T, d] (all-reduced); accumulates the local gradients
  Tensor backward(const FfnSaved& saved, const Tensor& dy) const;

  int64_t local_d_ff() const { return local_d_ff_; }

 private:
  ParamStore* store_;
  Communicator* tp_;
  ops::Activation act_;
  int64_t local_d_ff_;
  ParamId w_up_, w_down_;
};

}  // namespace moe

// BERT's next-sentence prediction head: a [d, 2] linear map (with bias) on the final hidden state
// of each sequence's first position ([CLS]), trained with softmax cross-entropy on IsNext/NotNext.
#pragma once

#include <cstdint>
#include <vector>

#include "src/nn/param_store.h"

namespace moe {

// What backward needs: the [CLS] row of each sequence, its hidden state, logits and lse.
struct NspSaved {
  Tensor rows;     // i32[B]: b * seq_len
  Tensor cls;      // [B, d] (compute)
  Tensor logits;   // [B, 2] (compute)
  Tensor lse;      // [B] (accum)
  Tensor labels;   // i32[B]: 1 = IsNext, 0 = NotNext
};

class NspHead {
 public:
  // Registers nsp_head.weight [d_model, 2] (normal, init_std) and nsp_head.bias [2] (zeros).
  NspHead(ParamStore& store, int64_t d_model, double init_std);

  // hidden[B*S, d] (final normed states), labels[B] (host, 0/1) -> loss[B] (accum), the
  // cross-entropy of each sequence's pair.
  Tensor forward(const Tensor& hidden, int64_t seq_len, const std::vector<int32_t>& labels, NspSaved& saved) const;
  // Gradient of scale * sum_b loss[b]: parameter gradients accumulated, dhidden[B*S, d] gets the
  // [CLS] rows' part added.
  void backward(const NspSaved& saved, float scale, Tensor& dhidden) const;

 private:
  ParamStore* store_;
  ParamId weight_, bias_;
};

// Sequences whose pair is classified correctly (loss < ln 2: the label's probability is above 1/2),
// from forward's loss[B] (a host read).
int64_t nsp_correct(const Tensor& loss);

}  // namespace moe

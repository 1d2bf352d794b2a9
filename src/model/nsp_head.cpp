// Next-sentence prediction head: gather the [CLS] rows, a linear map to two logits, softmax
// cross-entropy; backward scatters the [CLS] rows' gradient back into the hidden states.
#include "src/model/nsp_head.h"

#include <cmath>

#include "src/nn/linear.h"
#include "src/ops/ops.h"

namespace moe {

NspHead::NspHead(ParamStore& store, int64_t d_model, double init_std) : store_(&store) {
  weight_ = store.add("nsp_head.weight", {d_model, 2}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                      init_std);
  bias_ = store.add("nsp_head.bias", {2}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::zeros);
}

Tensor NspHead::forward(const Tensor& hidden, int64_t seq_len, const std::vector<int32_t>& labels,
                        NspSaved& saved) const {
  const auto batch = static_cast<int64_t>(labels.size());
  MOE_CHECK(hidden.ndim() == 2 && hidden.size(0) == batch * seq_len, "nsp head: hidden states of ",
            hidden.ndim() == 2 ? hidden.size(0) : -1, " rows for ", batch, " sequences of ", seq_len);
  std::vector<int32_t> rows(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) rows[static_cast<size_t>(b)] = static_cast<int32_t>(b * seq_len);
  saved.rows = Tensor::from_vector(rows, {batch}, DType::i32, hidden.device());
  saved.labels = Tensor::from_vector(labels, {batch}, DType::i32, hidden.device());
  saved.cls = Tensor::empty({batch, hidden.size(1)}, hidden.dtype(), hidden.device());
  ops::gather_rows(hidden, saved.rows, saved.cls);
  saved.logits = linear_forward(saved.cls, store_->param(weight_));
  ops::add_bias(saved.logits, store_->param(bias_));
  const DType accum = ops::accum_dtype(hidden.dtype());
  Tensor loss = Tensor::empty({batch}, accum, hidden.device());
  saved.lse = Tensor::empty({batch}, accum, hidden.device());
  ops::cross_entropy_forward(saved.logits, saved.labels, loss, saved.lse);
  return loss;
}

void NspHead::backward(const NspSaved& saved, float scale, Tensor& dhidden) const {
  Tensor dlogits = empty_like(saved.logits);
  ops::cross_entropy_backward(saved.logits, saved.labels, saved.lse, scale, dlogits);
  Tensor dbias = store_->grad(bias_), dweight = store_->grad(weight_);
  ops::bias_backward(dlogits, dbias);
  Tensor dcls = empty_like(saved.cls);
  linear_backward(saved.cls, store_->param(weight_), dlogits, dweight, dcls);
  ops::scatter_add_rows(dcls, saved.rows, dhidden);
}

int64_t nsp_correct(const Tensor& loss) {
  int64_t correct = 0;
  for (double l : loss.to_vector<double>()) correct += l < std::log(2.0) ? 1 : 0;
  return correct;
}

}  // namespace moe

// Top-k softmax router: parameter "<prefix>.weight" [d, E]; logits kept in the accum dtype
// (f32 on the GPU) so that the softmax and the selection are not done in bf16.
#include "routing/topk_softmax_router.h"

#include "src/model/linear.h"
#include "src/ops/ops.h"

namespace moe {

TopKSoftmaxRouter::TopKSoftmaxRouter(ParamStore& store, const std::string& prefix, int64_t d_model,
                                     int64_t num_experts, int64_t top_k, bool renormalize, double init_std)
    : store_(&store), num_experts_(num_experts), top_k_(top_k), renormalize_(renormalize) {
  MOE_CHECK(top_k >= 1 && top_k <= num_experts, "moe.top_k = ", top_k, " must be between 1 and moe.num_experts = ",
            num_experts);
  weight_ = store.add(prefix + ".weight", {d_model, num_experts}, ParamGroup::dense, ParamKind::weight, ParamInit::normal,
                      init_std);
}

Routing TopKSoftmaxRouter::route(const Tensor& x, const RouteInputs&, RouterSaved& saved) const {
  int64_t tokens = x.size(0);
  DType accum = ops::accum_dtype(x.dtype());
  saved.x = x;
  saved.logits = Tensor::empty({tokens, num_experts_}, accum, x.device());
  ops::matmul(x, false, store_->param(weight_), false, saved.logits);
  Routing r;
  r.probs = Tensor::empty({tokens, num_experts_}, accum, x.device());
  r.ids = Tensor::empty({tokens, top_k_}, DType::i32, x.device());
  r.weights = Tensor::empty({tokens, top_k_}, accum, x.device());
  ops::softmax_topk_forward(saved.logits, top_k_, renormalize_, r.probs, r.ids, r.weights);
  saved.probs = r.probs;
  saved.routing = r;
  return r;
}

void TopKSoftmaxRouter::backward(const RouterSaved& saved, const Tensor& dweights, const Tensor& expert_grad,
                                 Tensor& dx) const {
  Tensor dlogits = empty_like(saved.probs);
  ops::softmax_topk_backward(saved.probs, saved.routing.ids, saved.routing.weights, dweights, expert_grad,
                             renormalize_, dlogits);
  // The projection runs in the compute dtype: bring the logit gradient there first.
  Tensor dlogits_compute = dlogits;
  if (dlogits.dtype() != saved.x.dtype()) {
    dlogits_compute = Tensor::empty(dlogits.shape(), saved.x.dtype(), dlogits.device());
    ops::cast(dlogits, dlogits_compute);
  }
  Tensor dw = store_->grad(weight_);
  linear_backward(saved.x, store_->param(weight_), dlogits_compute, dw, dx, true);
}

}  // namespace moe

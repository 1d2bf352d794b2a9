// CPU reference AdamW (decoupled weight decay) over one contiguous parameter range.
// Raw pointers only; hyperparameters come in a POD struct.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// param[n], grad[n], m[n], v[n] (updated in place):
// m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, mhat = m / (1-b1^step), vhat = v / (1-b2^step),
// param -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * param)
template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const kernels::AdamWParams& p);

}  // namespace moe::cpu

// CPU reference activations: relu, gelu (tanh approximation) and the gated geglu / swiglu.
// Raw pointers only; gated inputs hold [gate | up] halves per row.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace moe::cpu {

// relu/gelu: x[T,f] -> y[T,f]. geglu/swiglu: x[T,2f] = [gate | up] -> y[T,f] = act(gate) * up
// (gelu for geglu, silu for swiglu). `width` is f, the output width.
template <typename T>
void activation_forward(kernels::Activation act, const T* x, T* y, int64_t rows, int64_t width);

// x (as above), dy[T,f] -> dx (shape of x, written)
template <typename T>
void activation_backward(kernels::Activation act, const T* x, const T* dy, T* dx, int64_t rows, int64_t width);

}  // namespace moe::cpu

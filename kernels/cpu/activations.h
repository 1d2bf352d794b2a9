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

// The backward of y = w_r * act(x) per row r with the row weight w_r folded in, given g[T,f] = the
// gradient of act(x) before weighting (dy of the unweighted output): dx = act'(x) * (w_r g),
// a_weighted[T,f] = w_r * act(x) (what the weight gradient of the next matmul reads) and
// drow_weights[r] = <g[r], act(x[r])> (the row weight's gradient, summed in double). row_weights
// nullptr: all 1; drow_weights nullptr: not computed (then dx is activation_backward's and
// a_weighted the forward's output, made again).
template <typename T>
void activation_backward_weighted(kernels::Activation act, const T* x, const T* g, const T* row_weights, T* dx,
                                  T* a_weighted, T* drow_weights, int64_t rows, int64_t width);

}  // namespace moe::cpu

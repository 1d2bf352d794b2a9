// CPU reference activations: relu, gelu (tanh approximation) and the gated geglu / swiglu.
// Raw pointers only; gated inputs hold [gate | up] halves per row.
#pragma once

#include <cstdint>

namespace moe::cpu {

// Mirrors ops::Activation without including the Tensor-level header.
enum class ActivationKind { relu, gelu, geglu, swiglu };

// relu/gelu: x[T,f] -> y[T,f]. geglu/swiglu: x[T,2f] = [gate | up] -> y[T,f] = act(gate) * up
// (gelu for geglu, silu for swiglu). `width` is f, the output width.
template <typename T>
void activation_forward(ActivationKind act, const T* x, T* y, int64_t rows, int64_t width);

// x (as above), dy[T,f] -> dx (shape of x, written)
template <typename T>
void activation_backward(ActivationKind act, const T* x, const T* dy, T* dx, int64_t rows, int64_t width);

}  // namespace moe::cpu

// CPU reference rotary position embedding (Llama / GPT-NeoX half-split layout), in place.
// Raw pointers only; the inverse rotation is the backward of the forward one.
#pragma once

#include <cstdint>

#include "kernels/rope_freq.h"

namespace moe::cpu {

// x[T, H*hd] in place: in each head, the pair (i, i + hd/2) is rotated by the angle
// pos * rope_inv_freq(i) (theta^(-2i/hd), scaled as `scaling` says) with pos = t % seq_len, or t % seq_len - doc_starts[t] (the position
// inside the token's document) when doc_starts i32[T] is given; inverse rotates by the negated angle.
template <typename T>
void rope(T* x, int64_t rows, int64_t num_heads, int64_t head_dim, int64_t seq_len, double theta, bool inverse,
          const int32_t* doc_starts = nullptr, const kernels::RopeScaling& scaling = {});

// The same rotation at given positions: row t of x[T, H*hd] is at position positions[t] (i32[T];
// cached decoding, where each row is one sequence's newest token).
template <typename T>
void rope_at(T* x, int64_t rows, int64_t num_heads, int64_t head_dim, const int32_t* positions, double theta,
             const kernels::RopeScaling& scaling);

}  // namespace moe::cpu

// Plain-C++ types shared by the CUDA launchers and their callers: the storage type of a
// float buffer. Usable from g++ (no CUDA headers needed).
#pragma once

namespace moe::cuda {

// Storage of a floating buffer on the GPU: bf16 for compute tensors, f32 for accum tensors.
enum class FloatType : int { f32 = 0, bf16 = 1 };

inline const char* float_type_name(FloatType t) { return t == FloatType::f32 ? "f32" : "bf16"; }

}  // namespace moe::cuda

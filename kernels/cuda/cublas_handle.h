// One cuBLAS handle per device and stream (main, side), created on first use and bound to the
// engine's current compute stream. Plain C++ (cuBLAS headers only).
#pragma once

#include <cublas_v2.h>

namespace moe::cuda {

// The handle of the current device (cudaGetDevice) and stream, with its stream set to compute_stream().
cublasHandle_t cublas_handle();

}  // namespace moe::cuda

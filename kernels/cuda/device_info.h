// Properties of the current CUDA device that launch heuristics need, cached per device.
// Plain C++.
#pragma once

namespace moe::cuda {

int multiprocessor_count();  // of the current device (cudaGetDevice)

}  // namespace moe::cuda

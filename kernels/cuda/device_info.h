// Properties of the current CUDA device that launch heuristics need, cached per device.
// Plain C++.
#pragma once

#include <string>

namespace moe::cuda {

int multiprocessor_count();  // of the current device (cudaGetDevice)
std::string device_name();   // of the current device, e.g. "NVIDIA H200" (MFU's datasheet peak)

}  // namespace moe::cuda

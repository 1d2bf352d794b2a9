// The name of the CUDA device this process computes on, as the driver reports it (e.g.
// "NVIDIA H200"): the trainer looks up the device's datasheet peak for MFU from it.
#pragma once

#include <string>

namespace moe {

// Of the current CUDA device; "" in a build without CUDA or where no device is usable.
std::string cuda_device_name();

}  // namespace moe

// Properties of the current CUDA device that launch heuristics need, cached per device.
// Plain C++.
#pragma once

#include <cstdint>
#include <string>

namespace moe::cuda {

int current_device();        // cudaGetDevice, checked to be below 64 (the caches' size)
// True the first time it is called for the current device with this `devices` mask (a bit per
// device, set here): for per-device settings made once, such as a kernel's shared-memory limit
// (cudaFuncSetAttribute applies to the device current when it is called).
bool first_use_on_current_device(uint64_t& devices);
int multiprocessor_count();  // of the current device (cudaGetDevice)
// The most shared memory a block of the current device may opt into (bytes; 232,448 on Hopper).
int max_shared_bytes_per_block();
std::string device_name();   // of the current device, e.g. "NVIDIA H200" (MFU's datasheet peak)

}  // namespace moe::cuda

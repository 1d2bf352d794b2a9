// Chooses the device and compute dtype of a run from train.device / train.dtype and the
// node-local rank (one GPU per rank).
#pragma once

#include "src/config/config.h"
#include "src/tensor/tensor.h"

namespace moe {

// "auto": CUDA when a GPU is usable, else CPU. "cuda" without a GPU is an error.
Device select_device(const TrainConfig& train, int local_rank);
// "" = bf16 on CUDA, f32 on CPU; CUDA supports bf16 only, the CPU f32 and f64.
DType select_dtype(const TrainConfig& train, Device device);

}  // namespace moe

// Device and dtype selection with one clear error per impossible request.
#include "src/train/device_select.h"

namespace moe {

Device select_device(const TrainConfig& train, int local_rank) {
  int gpus = cuda_device_count();
  if (train.device == "cpu" || (train.device == "auto" && gpus == 0)) return Device::cpu();
  MOE_CHECK(gpus > 0, "train.device = \"cuda\" but no CUDA device is usable on this machine");
  return Device::cuda(local_rank % gpus);
}

DType select_dtype(const TrainConfig& train, Device device) {
  if (train.dtype.empty()) return device.is_cuda() ? DType::bf16 : DType::f32;
  DType d = dtype_from_name(train.dtype);
  if (device.is_cuda()) {
    MOE_CHECK(d == DType::bf16, "train.dtype = \"", train.dtype, "\" is not supported on CUDA (use bf16)");
  } else {
    MOE_CHECK(d == DType::f32 || d == DType::f64, "train.dtype = \"", train.dtype,
              "\" is not supported on the CPU (use f32 or f64)");
  }
  return d;
}

}  // namespace moe

// Tensor: shared contiguous storage with a shape (<= 4 dims), a dtype and a device.
// Views along dim 0 share storage. No autograd: modules call ops forward and backward.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "src/tensor/dtype.h"
#include "src/util/check.h"

namespace moe {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Copies host values of type T (matching dtype, or f32 values into a bf16 tensor).
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, DType dtype,
                            Device device = Device::cpu());

  bool defined() const { return storage_ != nullptr; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  const Shape& shape() const { return shape_; }
  int64_t size(int dim) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cuda() const { return device_.is_cuda(); }

  void* data() const { return static_cast<char*>(storage_.get()) + offset_bytes_; }
  template <typename T>
  T* data_as() const { return static_cast<T*>(data()); }

  // Rows [begin, end) along dim 0, sharing storage.
  Tensor rows(int64_t begin, int64_t end) const;
  // The same storage with another shape of equal element count.
  Tensor view(const Shape& shape) const;

  Tensor to(Device device) const;  // a copy on another device (same dtype)
  Tensor clone() const;
  void copy_from(const Tensor& src);  // same dtype and numel, any devices
  void zero_();

  // Host copy of the values as T: f32/f64/bf16 tensors read as float or double, ints as ints.
  template <typename T>
  std::vector<T> to_vector() const;

 private:
  std::shared_ptr<void> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_;
};

// Shape contract helpers: one clear message per violated precondition.
void check_shape(const Tensor& t, const Shape& expected, const char* name);
void check_dtype(const Tensor& t, DType expected, const char* name);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

// Bytes currently held and the peak, per device kind, from this process's allocators.
struct MemoryStats {
  size_t current_bytes = 0;
  size_t peak_bytes = 0;
};
MemoryStats memory_stats(DeviceKind kind);
void reset_peak_memory(DeviceKind kind);

// Whether a CUDA device is usable in this process (false in a build without CUDA).
bool cuda_available();
int cuda_device_count();
void cuda_synchronize();

}  // namespace moe

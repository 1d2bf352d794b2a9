// Tensor storage, views, device copies and the per-device memory accounting.
#include "src/tensor/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe {

namespace {

struct Accounting {
  std::atomic<size_t> current{0};
  std::atomic<size_t> peak{0};
  void add(size_t bytes) {
    size_t now = current.fetch_add(bytes) + bytes;
    size_t old = peak.load();
    while (now > old && !peak.compare_exchange_weak(old, now)) {
    }
  }
  void sub(size_t bytes) { current.fetch_sub(bytes); }
};
Accounting g_accounting[2];

constexpr size_t k_cpu_alignment = 64;

std::shared_ptr<void> allocate(size_t bytes, Device device) {
  Accounting& acc = g_accounting[static_cast<int>(device.kind)];
  if (!device.is_cuda()) {
    size_t rounded = (bytes + k_cpu_alignment - 1) / k_cpu_alignment * k_cpu_alignment;
    void* ptr = std::aligned_alloc(k_cpu_alignment, rounded == 0 ? k_cpu_alignment : rounded);
    MOE_CHECK(ptr, "out of host memory allocating ", bytes, " bytes");
    acc.add(bytes);
    return {ptr, [bytes, &acc](void* p) { std::free(p); acc.sub(bytes); }};
  }
#if MOE_WITH_CUDA
  cuda::set_device(device.ordinal);
  void* ptr = cuda::pool_alloc(bytes);
  acc.add(bytes);
  return {ptr ? ptr : reinterpret_cast<void*>(uintptr_t{1}),  // non-null marker for empty
          [bytes, &acc](void* p) {
            if (bytes) cuda::pool_free(p);
            acc.sub(bytes);
          }};
#else
  MOE_FAIL("this build of moe-engine has no CUDA support (configure with CUDA to use ", device.str(), ")");
#endif
}

#if MOE_WITH_CUDA
cudaMemcpyKind copy_kind(Device dst, Device src) {
  if (dst.is_cuda() && src.is_cuda()) return cudaMemcpyDeviceToDevice;
  if (dst.is_cuda()) return cudaMemcpyHostToDevice;
  if (src.is_cuda()) return cudaMemcpyDeviceToHost;
  return cudaMemcpyHostToHost;
}
#endif

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (!dst_device.is_cuda() && !src_device.is_cuda()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if MOE_WITH_CUDA
  cuda::copy(dst, src, bytes, copy_kind(dst_device, src_device));
#else
  MOE_FAIL("this build of moe-engine has no CUDA support");
#endif
}

}  // namespace

std::string shape_str(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  MOE_CHECK(shape.size() <= 4, "tensors have at most 4 dims, got ", shape_str(shape));
  for (int64_t s : shape) MOE_CHECK(s >= 0, "negative size in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = allocate(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, DType dtype, Device device) {
  MOE_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
            " values for shape ", shape_str(shape));
  Tensor host = empty(shape, dtype, Device::cpu());
  if (dtype == DType::bf16) {
    auto* out = host.data_as<uint16_t>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = f32_to_bf16_bits(static_cast<float>(values[i]));
  } else {
    MOE_CHECK(dtype_size(dtype) == sizeof(T), "from_vector: element size mismatch for ", dtype_name(dtype));
    std::memcpy(host.data(), values.data(), host.nbytes());
  }
  return device.is_cuda() ? host.to(device) : host;
}

template Tensor Tensor::from_vector<float>(const std::vector<float>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector<double>(const std::vector<double>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, DType, Device);

int64_t Tensor::size(int dim) const {
  MOE_CHECK(dim >= 0 && dim < ndim(), "dim ", dim, " out of range for shape ", shape_str(shape_));
  return shape_[dim];
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  MOE_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "rows [", begin, ",", end,
            ") out of range for shape ", shape_str(shape_));
  Tensor t = *this;
  int64_t row_elems = numel() / std::max<int64_t>(shape_[0], 1);
  t.offset_bytes_ += static_cast<size_t>(begin * row_elems) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  MOE_CHECK(shape_numel(shape) == numel(), "cannot view ", shape_str(shape_), " as ", shape_str(shape));
  MOE_CHECK(shape.size() <= 4, "tensors have at most 4 dims, got ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::clone() const { return to(device_); }

void Tensor::copy_from(const Tensor& src) {
  MOE_CHECK(src.dtype_ == dtype_ && src.numel() == numel(), "copy_from: ", dtype_name(src.dtype_),
            shape_str(src.shape_), " into ", dtype_name(dtype_), shape_str(shape_));
  copy_bytes(data(), device_, src.data(), src.device_, nbytes());
}

void Tensor::zero_() {
  if (nbytes() == 0) return;
  if (!is_cuda()) {
    std::memset(data(), 0, nbytes());
    return;
  }
#if MOE_WITH_CUDA
  cuda::memset_zero(data(), nbytes());
#endif
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = is_cuda() ? to(Device::cpu()) : *this;
  int64_t n = numel();
  std::vector<T> out(static_cast<size_t>(n));
  switch (dtype_) {
    case DType::f32: for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(host.data_as<float>()[i]); break;
    case DType::f64: for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(host.data_as<double>()[i]); break;
    case DType::bf16:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(bf16_bits_to_f32(host.data_as<uint16_t>()[i]));
      break;
    case DType::i32: for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(host.data_as<int32_t>()[i]); break;
    case DType::i64: for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(host.data_as<int64_t>()[i]); break;
  }
  return out;
}

template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

void check_shape(const Tensor& t, const Shape& expected, const char* name) {
  MOE_CHECK(t.defined(), name, " is undefined (expected shape ", shape_str(expected), ")");
  MOE_CHECK(t.shape() == expected, name, " has shape ", shape_str(t.shape()), ", expected ", shape_str(expected));
}

void check_dtype(const Tensor& t, DType expected, const char* name) {
  MOE_CHECK(t.dtype() == expected, name, " has dtype ", dtype_name(t.dtype()), ", expected ", dtype_name(expected));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  MOE_CHECK(a.device() == b.device(), what, ": tensors on ", a.device().str(), " and ", b.device().str());
}

MemoryStats memory_stats(DeviceKind kind) {
  const Accounting& acc = g_accounting[static_cast<int>(kind)];
  return {acc.current.load(), acc.peak.load()};
}

void reset_peak_memory(DeviceKind kind) {
  Accounting& acc = g_accounting[static_cast<int>(kind)];
  acc.peak.store(acc.current.load());
}

int cuda_device_count() {
#if MOE_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

void cuda_synchronize() {
#if MOE_WITH_CUDA
  if (cuda_available()) cuda::synchronize();
#endif
}

}  // namespace moe

// Per-expert selections on the GPU. The two top-c selections run the CPU reference on a host
// copy: a per-expert top-c needs a segmented sort, the inputs are only T*E (or T*k) values,
// and apply_capacity must synchronise for its count anyway. The backward is a kernel.
#include "kernels/cuda/capacity.h"

#include <vector>

#include "kernels/cpu/capacity.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/runtime.h"

namespace moe::cuda {

namespace {

// ids[n], dweights[n] -> dscores[n] += dweights where taken
__global__ void expert_choice_backward_kernel(const int32_t* ids, const float* dweights, float* dscores, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (ids[i] >= 0) dscores[i] += dweights[i];
  }
}

template <typename T>
void to_host(std::vector<T>& host, const T* device, cudaStream_t stream) {
  CUDA_CHECK(cudaMemcpyAsync(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
}

template <typename T>
void to_device(T* device, const std::vector<T>& host, cudaStream_t stream) {
  CUDA_CHECK(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
}

}  // namespace

void expert_choice_forward(const float* scores, int32_t* ids, float* weights, int64_t tokens, int64_t num_experts,
                           int64_t capacity, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && num_experts >= 1 && capacity >= 0, "expert_choice_forward: bad shape (tokens ", tokens,
            ", experts ", num_experts, ", capacity ", capacity, ")");
  const auto n = static_cast<size_t>(tokens * num_experts);
  if (n == 0) return;
  // On the host: a per-expert top-c over the tokens needs a segmented sort (T*E values only).
  std::vector<float> host_scores(n), host_weights(n);
  std::vector<int32_t> host_ids(n);
  to_host(host_scores, scores, stream);
  wait_stream(stream);
  cpu::expert_choice_forward<float>(host_scores.data(), host_ids.data(), host_weights.data(), tokens, num_experts,
                                    capacity);
  to_device(ids, host_ids, stream);
  to_device(weights, host_weights, stream);
  wait_stream(stream);  // the host buffers die here
}

void expert_choice_backward(const int32_t* ids, const float* dweights, float* dscores, int64_t n,
                            cudaStream_t stream) {
  MOE_CHECK(n >= 0, "expert_choice_backward: bad size ", n);
  if (n == 0) return;
  constexpr int threads = 256;
  expert_choice_backward_kernel<<<grid_for(n, threads, 8192), threads, 0, stream>>>(ids, dweights, dscores, n);
  CUDA_CHECK_LAUNCH();
}

int64_t apply_capacity(int32_t* ids, float* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                       kernels::DropOrder order, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && num_experts >= 1 && capacity >= 0, "apply_capacity: bad shape (tokens ", tokens,
            ", k ", k, ", experts ", num_experts, ", capacity ", capacity, ")");
  const auto n = static_cast<size_t>(tokens * k);
  if (n == 0) return 0;
  // On the host: a per-expert top-c needs a segmented sort, and the count must reach the host anyway.
  std::vector<int32_t> host_ids(n);
  std::vector<float> host_weights(n);
  to_host(host_ids, ids, stream);
  to_host(host_weights, weights, stream);
  wait_stream(stream);
  const int64_t dropped = cpu::apply_capacity<float>(host_ids.data(), host_weights.data(), tokens, k, num_experts,
                                                     capacity, order);
  if (dropped > 0) {
    to_device(ids, host_ids, stream);
    to_device(weights, host_weights, stream);
    wait_stream(stream);  // the host buffers die here
  }
  return dropped;
}

}  // namespace moe::cuda
